"""The command line: absl flags, Cloud AI Platform's --job-dir, and clear refusals."""

import subprocess
import sys

import pytest
from absl import app
from absl import flags

from tests.helpers import PROJECT_ROOT
from trainer import command
from trainer import settings
from trainer import config as config_lib
from trainer import pipeline


def run_task(*args, timeout=300):
  return subprocess.run([sys.executable, "-m", "trainer.task", *args], capture_output=True,
                        text=True, timeout=timeout, cwd=PROJECT_ROOT)


@pytest.fixture
def parsed_flags():
  values = flags.FlagValues()
  command.define_flags(values)

  def parse(*args):
    values.unparse_flags()
    values(["trainer.task", *args])
    return command.config_from_flags(values)
  return parse


@pytest.mark.parametrize("spelling", ["--job-dir", "--job_dir"])
def test_job_dir_is_accepted_as_cloud_ai_platform_passes_it(parsed_flags, spelling):
  assert parsed_flags(spelling, "gs://bucket/jobs/7").job_dir == "gs://bucket/jobs/7"


def test_flags_become_one_typed_config(parsed_flags):
  config = parsed_flags("--hidden_units=128,64", "--char_ngrams=3,4", "--batch_norm",
                        "--train_steps=5", "--embedding_optimizer=SGD")
  assert config.model.hidden_units == (128, 64)
  assert config.model.batch_norm and config.model.embedding_optimizer == "SGD"
  assert config.text_module.char_ngrams == (3, 4)
  assert config.steps_for(1000) == 5


def test_data_flags_reach_the_config_that_reads_the_data(parsed_flags, tmp_path):
  # A CLINC-style JSON file read as the flags say: its splits, its format, and the eval
  # example whose label training never saw dropped.
  data = tmp_path / "clinc.json"
  data.write_text('{"train_small": [["book a flight", "book_flight"], ["play a song", "play"]],'
                  ' "val_small": [["fly me to rome", "book_flight"], ["what time is it", "time"]]}')
  config = parsed_flags(f"--train_files={data}", f"--eval_files={data}", "--data_format=clinc_json",
                        "--train_split=train_small", "--eval_split=val_small",
                        "--drop_unseen_eval_labels", f"--job-dir={tmp_path}/job")
  assert (config.data_format, config.train_split, config.eval_split) == (
      "clinc_json", "train_small", "val_small")
  assert config.drop_unseen_eval_labels
  train, evaluation = pipeline.load_data(config)
  assert [e.text for e in train] == ["book a flight", "play a song"]
  assert [e.text for e in evaluation] == ["fly me to rome"]


def test_no_flags_train_on_the_bundled_data(parsed_flags):
  config = parsed_flags()
  assert config.train_files.endswith("data/train.csv")
  assert config.eval_files.endswith("data/eval.csv")
  assert config.steps_for(616) > 0


@pytest.mark.slow
def test_help_documents_every_trainer_flag():
  completed = run_task("--help")  # absl exits 1 after printing help
  assert "Trains the text-intent model" in completed.stdout
  own_flags = settings.flag_names(config_lib.TrainerConfig)
  assert len(own_flags) > 25
  for name in own_flags:
    assert f"--{name}" in completed.stdout or f"--[no]{name}" in completed.stdout, name


@pytest.mark.slow
def test_invalid_setting_stops_before_training_naming_the_flag(tmp_path):
  completed = run_task("--batch_size=0", f"--job-dir={tmp_path}/job")
  assert completed.returncode != 0
  assert "batch_size must be >= 1" in completed.stderr
  assert not (tmp_path / "job").exists()


@pytest.mark.slow
def test_bad_data_stops_with_the_file_and_line_and_writes_nothing(tmp_path):
  bad = tmp_path / "train.csv"
  bad.write_text("text,intent\nhello,greeting\n,goodbye\n")
  completed = run_task(f"--train_files={bad}", f"--job-dir={tmp_path}/job")
  assert completed.returncode == 2
  assert f"{bad}:3: empty or missing text" in completed.stderr
  assert not (tmp_path / "job").exists()


def test_unexpected_positional_arguments_are_refused():
  with pytest.raises(app.UsageError, match="Unexpected arguments"):
    command.main(["trainer.task", "extra"])
