"""What writing a Classify answer from label templates saves, against writing it value by value.

    python benchmarks/classify_answers.py --version_dir <a classifier's version dir>

The embedded server writes the labels of a Classify answer once per row of labels (from the
row's second answer on, `results.LabelTemplates`) and fills in the scores: the REST answer's
JSON (json_answers.py) and the gRPC answer's ClassificationResult (results.py). This runs
the model's default signature on evaluation examples (one a request) and prints, in one
process, with the templates on and off (every row then written value by value, as a row seen
for the first time is), the p50 microseconds of:

- the answer alone (JSON, proto), from the same outputs;
- a whole REST Classify answered in-process (`RestApi.handle`: parse, session run, answer),
  and the same for gRPC's path (Classify on the version the core holds, then the ClassificationResponse), where
  what the answer writing costs the session run that follows it shows too.

Rounds alternate on and off; the medians of the rounds and their ratios (off / on) are printed
as JSON.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from tensorflow_serving.apis import classification_pb2  # noqa: E402
from tensorflow_serving.apis import model_pb2  # noqa: E402

from export.servable import SessionServable  # noqa: E402
from export.warmup import DEFAULT_SIGNATURE  # noqa: E402
from serving import clients  # noqa: E402
from serving import probes  # noqa: E402
from serving.model_server import config_files  # noqa: E402
from serving.model_server import json_answers  # noqa: E402
from serving.model_server import results as results_lib  # noqa: E402
from serving.model_server.classify import classify  # noqa: E402
from serving.model_server.core import ServerCore  # noqa: E402
from serving.model_server.inference import answer  # noqa: E402
from serving.model_server.rest import RestApi  # noqa: E402

flags.DEFINE_string("version_dir", None, "A classifier's SavedModel version dir.")
flags.DEFINE_integer("calls", 3000, "Calls per figure.")
flags.DEFINE_integer("rounds", 3, "Alternating rounds, templates on and off.")
flags.mark_flag_as_required("version_dir")
FLAGS = flags.FLAGS
MODEL_NAME = "model"


class NoTemplates:
  """In place of the server's LabelTemplates: no row ever has one."""

  def get(self, labels):
    return None


def p50_us(call, examples):
  samples = []
  for i in range(FLAGS.calls):
    example = examples[i % len(examples)]
    started = time.perf_counter()
    call(example)
    samples.append(time.perf_counter() - started)
  return float(np.percentile(samples, 50) * 1e6)


def main(argv):
  del argv
  version_dir = FLAGS.version_dir.rstrip("/")
  with SessionServable(version_dir) as servable:
    probe = probes.build_probes(servable, signature_names=[DEFAULT_SIGNATURE])[DEFAULT_SIGNATURE]
  serialized = [probe.batch(1, i)["inputs"][0] for i in range(len(probe.rows))]
  bodies = [json.dumps({"signature_name": DEFAULT_SIGNATURE, "examples": [
      clients.example_to_json(tf.train.Example.FromString(example))]}).encode()
      for example in serialized]
  core = ServerCore(config_files.single_model_config(MODEL_NAME, os.path.dirname(version_dir)))
  core.load()
  api = RestApi(core)
  path = f"/v1/models/{MODEL_NAME}:classify"
  spec = model_pb2.ModelSpec(name=MODEL_NAME)
  def classified(example):
    with core.servable(spec) as servable:
      return answer(classify(servable, spec.signature_name, [example], core.checks))

  results = [classified(example)[1] for example in serialized]
  count = results[0].scores.shape[1]

  def grpc_answer(example):
    answer_spec, result = classified(example)
    return classification_pb2.ClassificationResponse(model_spec=answer_spec,
                                                     result=result.to_proto())

  figures = {"json_answer": lambda: p50_us(json_answers.classify_response, results),
             "proto_answer": lambda: p50_us(lambda r: r.to_proto(), results),
             "rest_classify_in_process": lambda: p50_us(
                 lambda body: api.handle("POST", path, body), bodies),
             "grpc_classify_in_process": lambda: p50_us(grpc_answer, serialized)}
  templates = (json_answers._ROW_TEMPLATES, results_lib._WIRE_TEMPLATES)
  rounds = {"templates": {name: [] for name in figures},
            "value_by_value": {name: [] for name in figures}}
  try:
    for _ in range(FLAGS.rounds):
      for way in rounds:
        # The benchmark swaps the server's own template stores (private) to measure both ways.
        if way == "templates":
          json_answers._ROW_TEMPLATES, results_lib._WIRE_TEMPLATES = templates
        else:
          json_answers._ROW_TEMPLATES = results_lib._WIRE_TEMPLATES = NoTemplates()
        for name, measure in figures.items():
          measure()  # the first answers build the templates; a warm start for both ways
          rounds[way][name].append(measure())
  finally:
    json_answers._ROW_TEMPLATES, results_lib._WIRE_TEMPLATES = templates
    core.close()
  medians = {way: {name: round(statistics.median(values), 1) for name, values in by.items()}
             for way, by in rounds.items()}
  print(json.dumps({
      "version_dir": version_dir, "classes": count, "examples": len(serialized),
      "calls_per_figure": FLAGS.calls, "rounds": FLAGS.rounds,
      "p50_us": medians,
      "value_by_value_over_templates": {
          name: round(medians["value_by_value"][name] / medians["templates"][name], 3)
          for name in figures}}, indent=1))


if __name__ == "__main__":
  app.run(main)
