"""Lineage in ML Metadata: the store, the types, recording executions, the push gate, queries.

It imports no stage: a stage records itself through `record.Recorder` (optimize/recorded.py,
serving/smoke_test/recorded.py, trainer/pipeline.py).

store.py        connection configs (SQLite / MySQL), flags, open_store -> LineageStore
schema.py       types and properties; builders for the artifacts the stages produce
fingerprint.py  content hashes of data files and model dirs, through tf.io.gfile
record.py       Recorder: one execution per stage run, COMPLETE or FAILED with the reason
push.py         push(): copy a blessed servable into a TF Serving base path, recorded
query.py        the chain behind a served or exported model, as a table or JSON
command.py      python -m lineage: that chain on the command line
"""
