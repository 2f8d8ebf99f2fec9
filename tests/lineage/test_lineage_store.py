"""Store configuration from flags and arguments; types registered once and reused."""

import pytest
from absl import flags
from ml_metadata import errors

from lineage import schema
from lineage import store as store_lib


def test_sqlite_defaults_to_the_job_dir(tmp_path):
  config = store_lib.store_config(job_dir=str(tmp_path / "job"))
  assert config == store_lib.SqliteStore(str(tmp_path / "job" / "metadata.sqlite"))
  explicit = store_lib.store_config(job_dir=str(tmp_path), metadata_db=str(tmp_path / "m.db"))
  assert explicit.path == str(tmp_path / "m.db")


def test_sqlite_refuses_a_remote_path():
  with pytest.raises(store_lib.StoreError, match="must be a local file.*--metadata_db"):
    store_lib.store_config(job_dir="gs://bucket/job")


def test_mysql_config_and_its_errors(monkeypatch):
  config = store_lib.store_config(mysql_host="db.internal", mysql_user="ml", mysql_port=3307)
  assert config == store_lib.MySQLStore("db.internal", "ml", 3307, "mlmd", "MLMD_MYSQL_PASSWORD")
  assert config.describe() == "mysql://ml@db.internal:3307/mlmd"
  with pytest.raises(store_lib.StoreError, match="--mysql_user is required"):
    store_lib.store_config(mysql_host="db.internal")
  with pytest.raises(store_lib.StoreError, match="not both"):
    store_lib.store_config(metadata_db="/tmp/m.db", mysql_host="db.internal", mysql_user="ml")
  with pytest.raises(store_lib.StoreError, match="no metadata store"):
    store_lib.store_config()

  monkeypatch.delenv("MLMD_MYSQL_PASSWORD", raising=False)
  with pytest.raises(store_lib.StoreError, match="MLMD_MYSQL_PASSWORD .* is not set"):
    store_lib.open_store(config)
  monkeypatch.setenv("MLMD_MYSQL_PASSWORD", "s3cret-value")
  assert config.password() == "s3cret-value"
  assert "s3cret-value" not in repr(config)


def test_flags_build_the_config(tmp_path):
  values = flags.FlagValues()
  store_lib.define_flags(values)
  values(["prog", "--mysql_host=127.0.0.1", "--mysql_user=ml", "--mysql_password_env=PW"])
  assert store_lib.config_from_flags("ignored", values) == store_lib.MySQLStore(
      "127.0.0.1", "ml", 3306, "mlmd", "PW")
  values = flags.FlagValues()
  store_lib.define_flags(values)
  values(["prog"])
  assert store_lib.config_from_flags(str(tmp_path), values).path.endswith("/metadata.sqlite")


def test_types_are_registered_once_and_reused(tmp_path):
  config = store_lib.store_config(metadata_db=str(tmp_path / "m.sqlite"))
  first = store_lib.open_store(config)
  second = store_lib.open_store(config)
  for name in list(schema.ARTIFACT_TYPES) + list(schema.EXECUTION_TYPES):
    assert first.type_id(name) == second.type_id(name)
  stored = second.mlmd.get_execution_type(schema.OPTIMIZE)
  assert set(stored.properties) == set(schema.EXECUTION_TYPES[schema.OPTIMIZE])
  assert len(second.mlmd.get_artifact_types()) == len(first.mlmd.get_artifact_types())


def test_a_reader_does_not_create_a_store(tmp_path):
  config = store_lib.store_config(job_dir=str(tmp_path / "nowhere"))
  with pytest.raises(store_lib.StoreError, match="no metadata store at .*wrong --job-dir"):
    store_lib.open_store(config, create=False)
  assert not (tmp_path / "nowhere").exists()


def test_lock_conflicts_are_retried_a_bounded_number_of_times():
  policy = store_lib.RetryPolicy(attempts=3, first_delay_secs=0.001)
  attempts = []

  def locked_twice():
    attempts.append(1)
    if len(attempts) < 3:
      raise RuntimeError("database is locked")
    return "done"

  assert store_lib.with_retries(locked_twice, "test", policy) == "done"

  def always_locked():
    attempts.append(1)
    raise errors.AbortedError("Concurrent writes aborted after max number of retries.")

  attempts.clear()
  with pytest.raises(errors.AbortedError):
    store_lib.with_retries(always_locked, "test", policy)
  assert len(attempts) == 3

  def invalid():
    attempts.append(1)
    raise errors.InvalidArgumentError("Found unknown property: x")

  attempts.clear()
  with pytest.raises(errors.InvalidArgumentError):
    store_lib.with_retries(invalid, "test", policy)
  assert len(attempts) == 1
