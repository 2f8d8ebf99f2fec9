"""Trains the text-intent model, exports it for TF Serving, optimizes, smoke-tests and (with
--push_to) pushes it, recording every stage in ML Metadata.

    python -m trainer.task                       # bundled data, job dir jobs/intent
    python -m trainer.task --job-dir gs://bucket/job --train_files gs://.../train.csv ...

Accepts `--job-dir` as Cloud AI Platform passes it (and `--job_dir`). Rerunning the
same command resumes from the job dir's latest checkpoint.

On a cluster (TF_CONFIG with chief/master, worker, ps, evaluator tasks, as AI Platform and
Vertex AI set it, or `python -m trainer.local_cluster`) every task runs this same command;
see trainer/cloud.py for the output directories in cloud jobs.
"""

import os


def main() -> None:
  # Before TensorFlow's first import, whose C++ start-up lines would bury the trainer's
  # output; users can still raise the level themselves.
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from trainer import command  # pylint: disable=import-outside-toplevel
  command.run()


if __name__ == "__main__":
  main()
