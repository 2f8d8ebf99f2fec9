"""Training speed against a base commit, measured in one interleaved run on this machine.

    git worktree add --detach ../base <commit>
    python benchmarks/train_paired.py --base_tree ../base [--seeds 42,43,44] [--final_fit]

For each seed, benchmarks/train_banking77.py of the base tree and of this tree train the same
validation run (and with --final_fit the final fit on all of train.csv, scored on test.csv),
one after the other in fresh processes, the order alternating from seed to seed so that drift
in the machine's speed falls on both alike. Each process uses its own tree's code and
defaults; trainer flags after `--` go to both. Prints, per seed and in all: training
examples/s of both and their ratio, validation (and test) accuracy of both, and this tree's
training-step profile (the base tree's benchmark may predate it).
"""

import json
import os
import statistics
import subprocess
import sys

from absl import app
from absl import flags

flags.DEFINE_string("base_tree", None, "A checkout (git worktree) of the base commit.")
flags.DEFINE_list("seeds", ["42", "43", "44"], "Training seeds, one pair of runs each.")
flags.DEFINE_bool("final_fit", False, "Also run the final fit and report test accuracy.")
flags.DEFINE_string(
    "job_root", "/dev/shm" if os.path.isdir("/dev/shm") else None,
    "Where both trees' job dirs go (their TMPDIR). Memory by default: on a disk mounted with "
    "online discard, deleting one run's checkpoints stalled the next run's writes for 10-40 s "
    "here, a pause that falls on whichever tree runs next.")
flags.mark_flag_as_required("base_tree")
FLAGS = flags.FLAGS

THIS_TREE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_SPLITS = ("validation", "test")


def run_benchmark(tree, seed, final_fit, trainer_flags):
  """One fresh process of `tree`'s train_banking77.py: its JSON figures for one seed."""
  command = [sys.executable, os.path.join(tree, "benchmarks", "train_banking77.py"),
             f"--seeds={seed}", "--nobaseline", "--final_fit" if final_fit else "--nofinal_fit",
             *trainer_flags]
  environment = dict(os.environ, PYTHONPATH=tree)
  if FLAGS.job_root:
    environment["TMPDIR"] = FLAGS.job_root
  finished = subprocess.run(command, cwd=tree, env=environment, capture_output=True,
                            text=True, check=False)
  if finished.returncode:
    raise RuntimeError(f"{' '.join(command)} (in {tree}) failed with exit code "
                       f"{finished.returncode}:\n{finished.stderr[-4000:]}")
  return json.loads(finished.stdout)["runs"][0]


def summary(values):
  return {"mean": round(statistics.mean(values), 4), "min": min(values), "max": max(values)}


def main(argv):
  trainer_flags = argv[1:]
  base_tree = os.path.abspath(FLAGS.base_tree)
  if not os.path.isfile(os.path.join(base_tree, "benchmarks", "train_banking77.py")):
    raise app.UsageError(f"--base_tree {base_tree}: no benchmarks/train_banking77.py there")
  pairs = []
  for number, seed in enumerate(FLAGS.seeds):
    order = (("base", base_tree), ("new", THIS_TREE))
    if number % 2:
      order = order[::-1]
    pair = {"seed": int(seed)}
    for label, tree in order:
      pair[label] = run_benchmark(tree, seed, FLAGS.final_fit, trainer_flags)
      print(f"seed {seed} {label}: " + json.dumps(
          {split: {key: pair[label][split][key] for key in (
              "accuracy", "train_examples_per_second", "train_and_evaluate_seconds")}
           for split in _SPLITS if split in pair[label]}), file=sys.stderr, flush=True)
    pairs.append(pair)
  figures = {"base_tree": base_tree, "trainer_flags": trainer_flags, "per_seed": [],
             "new_profile": {}}
  for pair in pairs:
    row = {"seed": pair["seed"]}
    for split in _SPLITS:
      if split not in pair["new"]:
        continue
      base, new = pair["base"][split], pair["new"][split]
      row[split] = {
          "examples_per_second": {"base": base["train_examples_per_second"],
                                  "new": new["train_examples_per_second"],
                                  "ratio": round(new["train_examples_per_second"]
                                                 / base["train_examples_per_second"], 2)},
          "train_and_evaluate_seconds": {"base": base["train_and_evaluate_seconds"],
                                         "new": new["train_and_evaluate_seconds"]},
          "accuracy": {"base": base["accuracy"], "new": new["accuracy"]}}
      if "profile" in new:
        figures["new_profile"].setdefault(split, []).append(
            {"seed": pair["seed"], **new["profile"]})
    figures["per_seed"].append(row)
  for split in _SPLITS:
    rows = [row[split] for row in figures["per_seed"] if split in row]
    if rows:
      figures[split] = {
          "examples_per_second_ratio": summary(
              [r["examples_per_second"]["ratio"] for r in rows]),
          "accuracy_base": summary([r["accuracy"]["base"] for r in rows]),
          "accuracy_new": summary([r["accuracy"]["new"] for r in rows])}
  print(json.dumps(figures, indent=2))


if __name__ == "__main__":
  app.run(main)
