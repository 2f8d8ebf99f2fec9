"""How long the embedded server's REST parser takes on bodies at the 64 MiB limit.

    python benchmarks/json_parse.py [--mib 64] [--repeats 3]

Parses (serving/model_server/json_requests.parse_request, TF Serving's JSON rules: first
duplicate key wins, numbers too large for a double refused) bodies of one long text, of many
short texts, and of many floats, each about --mib MiB, and prints the median seconds and MB/s
of each beside the standard library's plain json.loads of the same bytes as JSON.
"""

import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402

from serving.model_server import json_requests  # noqa: E402

flags.DEFINE_integer("mib", 64, "Size of each body in MiB.")
flags.DEFINE_integer("repeats", 3, "Parses per body; the median is printed.")
FLAGS = flags.FLAGS


def bodies(size):
  one_text = json.dumps({"instances": ["a" * (size - 20)]}).encode()
  short = "book a flight to rome"
  count = size // (len(short) + 3)
  short_texts = json.dumps({"instances": [short] * count}).encode()
  floats = json.dumps({"instances": [[0.123456789] * 100] * (size // 1300)}).encode()
  return {"one long text": one_text, "short texts": short_texts, "floats": floats}


def median_seconds(parse, body):
  samples = []
  for _ in range(FLAGS.repeats):
    started = time.perf_counter()
    parse(body)
    samples.append(time.perf_counter() - started)
  return statistics.median(samples)


def main(argv):
  del argv
  figures = {}
  for name, body in bodies(FLAGS.mib << 20).items():
    ours = median_seconds(json_requests.parse_request, body)
    plain = median_seconds(json.loads, body)
    figures[name] = {"bytes": len(body), "seconds": round(ours, 3),
                     "mb_per_s": round(len(body) / ours / 1e6, 1),
                     "plain_json_loads_seconds": round(plain, 3),
                     "over_plain": round(ours / plain, 2)}
  print(json.dumps(figures, indent=2))


if __name__ == "__main__":
  app.run(main)
