"""Exports a text classifier estimator as a TF Serving servable.

Layout: `<export_base>/<numeric version>/` with `saved_model.pb`, `variables/`, `assets/`
and `assets.extra/tf_serving_warmup_requests`, plus, when given, the real sample of traffic
the optimizer's guard judges the model on (`assets.extra/evaluation_sample.*`, see
export/evaluation_sample.py) and the out-of-scope threshold the trainer picked
(`assets.extra/out_of_scope.json`, see export/out_of_scope.py). Signatures:

- `serving_default`, `classification`: classify; one DT_STRING input `inputs` of
  serialized `tf.Example` (feature `text`); outputs `classes`, `scores`.
- `predict`: every head output, from serialized `tf.Example` (input `examples`).
- `predict_text`: every head output, from a plain string tensor (input `text`), so a REST
  client can POST `{"instances": ["book a flight to rome"]}`.
"""

import os
import tempfile
from typing import Optional, Sequence, Tuple

import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from export import artifact_io
from export import evaluation_sample
from export import out_of_scope
from export import versions
from export import warmup

CLASSIFY_SIGNATURES = ("serving_default", "classification")
PREDICT_SIGNATURE = "predict"
RAW_TEXT_SIGNATURE = "predict_text"
EXAMPLES_INPUT = "examples"
_RAW_RECEIVER = "raw_text"
# The feature of the evaluation sample's examples that holds a text's true intent.
SAMPLE_LABEL_KEY = "intent"
_WARMUP_BATCH_SIZES = (1, 8)


def text_serving_input_receiver_fn(text_feature: str = "text"):
  """Parses serialized `tf.Example`s, with the parsed text also feedable directly.

  The raw string input is a `placeholder_with_default` downstream of the parser:
  feeding it skips parsing, so one graph serves both the tf.Example and the raw-text
  signatures.
  """

  def receiver_fn():
    serialized = tf.compat.v1.placeholder(tf.string, [None], name="input_example_tensor")
    parsed = tf.io.parse_example(
        serialized, {text_feature: tf.io.FixedLenFeature([1], tf.string)})
    text = tf.compat.v1.placeholder_with_default(
        tf.reshape(parsed[text_feature], [-1]), [None], name=text_feature)
    return tf.estimator.export.ServingInputReceiver(
        features={text_feature: text},
        receiver_tensors={EXAMPLES_INPUT: serialized},
        receiver_tensors_alternatives={_RAW_RECEIVER: {text_feature: text}})

  return receiver_fn


def warmup_logs(texts: Sequence[str], text_feature: str = "text"):
  """One record per signature and batch size, from real (eval) texts."""
  logs = []
  for batch in warmup.batches(list(texts), _WARMUP_BATCH_SIZES):
    logs.extend(warmup.classify_log(name, batch, text_feature) for name in CLASSIFY_SIGNATURES)
    serialized = [warmup.text_example(t, text_feature).SerializeToString() for t in batch]
    logs.append(warmup.predict_log(PREDICT_SIGNATURE, {EXAMPLES_INPUT: serialized}))
    logs.append(warmup.predict_log(RAW_TEXT_SIGNATURE, {text_feature: list(batch)}))
  return logs


def _keep_serving_signatures(version_dir: str) -> None:
  """Drops the estimator's alternative-receiver signatures except raw-text predict.

  The estimator derives a classify signature from every receiver; over a raw string it
  would claim to classify tf.Examples, which TF Serving's Classify API would then send.
  """
  path = os.path.join(version_dir, "saved_model.pb")
  saved_model = saved_model_pb2.SavedModel()
  with tf.io.gfile.GFile(path, "rb") as f:
    saved_model.ParseFromString(f.read())
  for meta_graph in saved_model.meta_graphs:
    signatures = meta_graph.signature_def
    raw_predict = signatures[f"{_RAW_RECEIVER}:{PREDICT_SIGNATURE}"]
    signatures[RAW_TEXT_SIGNATURE].CopyFrom(raw_predict)
    for name in [n for n in signatures if n.startswith(_RAW_RECEIVER + ":")]:
      del signatures[name]
  artifact_io.write_atomic(path, saved_model.SerializeToString())


def export_servable(estimator: tf.estimator.Estimator, export_base: str,
                    warmup_texts: Sequence[str], text_feature: str = "text",
                    checkpoint_path: str = None,
                    oos_threshold: Optional[out_of_scope.OutOfScopeThreshold] = None,
                    sample: Sequence[Tuple[str, Optional[str]]] = (),
                    sample_sources: Sequence[str] = ()) -> str:
  """Exports the latest (or given) checkpoint; returns the new version directory.

  assets.extra gets the warmup records and, when given, the evaluation sample (`sample`:
  (text, intent or None) pairs, from `sample_sources`) and the out-of-scope threshold.
  """
  local_scratch = tempfile.mkdtemp(prefix="warmup-")
  warmup_path = os.path.join(local_scratch, warmup.WARMUP_FILENAME)
  assets_extra = {warmup.WARMUP_FILENAME: warmup_path}
  try:
    warmup.write_warmup_file(warmup_path, warmup_logs(warmup_texts, text_feature))
    if sample:
      assets_extra.update(evaluation_sample.write(
          local_scratch,
          [(warmup.text_example(text, text_feature), label.encode("utf-8"))
           for text, label in sample if label is not None],
          [warmup.text_example(text, text_feature) for text, label in sample if label is None],
          SAMPLE_LABEL_KEY, sample_sources))
    if oos_threshold is not None:
      assets_extra[out_of_scope.FILENAME] = os.path.join(local_scratch, out_of_scope.FILENAME)
      with open(assets_extra[out_of_scope.FILENAME], "w") as f:
        f.write(oos_threshold.to_json())
    staging_base = artifact_io.join(export_base, "_staging")
    with artifact_io.staging_dir(staging_base, overwrite=True) as staging:
      staged_version = estimator.export_saved_model(
          staging, text_serving_input_receiver_fn(text_feature),
          assets_extra=assets_extra,
          checkpoint_path=checkpoint_path)
      staged_version = staged_version.decode() if isinstance(staged_version, bytes) \
          else staged_version
      _keep_serving_signatures(staged_version)
      # The estimator names the version by the time; an older clock never goes below.
      version = versions.next_version(export_base, int(os.path.basename(staged_version)))
      version_dir = artifact_io.join(export_base, str(version))
      tf.io.gfile.rename(staged_version, version_dir)
  finally:
    tf.io.gfile.rmtree(local_scratch)
  tf.io.gfile.rmtree(staging_base)
  return version_dir
