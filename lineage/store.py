"""Where the lineage lives: an ML Metadata store, embedded SQLite or MySQL.

The connection is a typed value (`SqliteStore` or `MySQLStore`) built from flags or
arguments and passed to whoever records; nothing here is global. `open_store` connects,
registers the project's types (idempotently, so every run reuses them) and returns a
`LineageStore` whose calls retry the transient failures of concurrent writers.

The MySQL password is never a flag, an argument or a log line: the config names the
environment variable that holds it, read only when connecting.
"""

import dataclasses
import logging as std_logging
import os
from typing import Callable, Dict, Optional, TypeVar, Union

import ml_metadata as mlmd
import tenacity
from absl import flags
from absl import logging
from ml_metadata import errors as mlmd_errors
from ml_metadata.proto import metadata_store_pb2

from lineage import schema

DEFAULT_SQLITE_NAME = "metadata.sqlite"
DEFAULT_PASSWORD_ENV = "MLMD_MYSQL_PASSWORD"
DEFAULT_MYSQL_PORT = 3306
DEFAULT_MYSQL_DATABASE = "mlmd"

# Two writers on one SQLite file (or conflicting MySQL transactions) surface as these; the
# transaction was rolled back, so running it again is safe. MLMD's own client retries only
# AbortedError on calls, and nothing when it creates its tables.
_TRANSIENT_MARKERS = ("database is locked", "database table is locked",
                      "database schema is locked", "concurrent writes aborted",
                      "subset of tables", "deadlock found", "lock wait timeout")

T = TypeVar("T")


class StoreError(RuntimeError):
  """The metadata store cannot be configured or reached; the message says which and why."""


@dataclasses.dataclass(frozen=True)
class SqliteStore:
  path: str  # a local file: SQLite cannot live on gs://

  def describe(self) -> str:
    return f"sqlite:{self.path}"


@dataclasses.dataclass(frozen=True)
class MySQLStore:
  host: str
  user: str
  port: int = DEFAULT_MYSQL_PORT
  database: str = DEFAULT_MYSQL_DATABASE
  password_env: str = DEFAULT_PASSWORD_ENV

  def describe(self) -> str:
    return f"mysql://{self.user}@{self.host}:{self.port}/{self.database}"

  def password(self) -> str:
    try:
      return os.environ[self.password_env]
    except KeyError:
      raise StoreError(f"MySQL store {self.describe()}: the environment variable "
                       f"{self.password_env} that holds the password is not set "
                       f"(--mysql_password_env names another)") from None


StoreConfig = Union[SqliteStore, MySQLStore]


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
  """Bounded retries with jittered exponential back-off."""
  attempts: int = 8
  first_delay_secs: float = 0.05
  max_delay_secs: float = 2.0

  def retrying(self, retry, **options) -> tenacity.Retrying:
    # Jitter keeps two writers that collided once from colliding again in step.
    return tenacity.Retrying(
        retry=retry, stop=tenacity.stop_after_attempt(self.attempts), reraise=True, **options,
        wait=tenacity.wait_random_exponential(multiplier=self.first_delay_secs,
                                              max=self.max_delay_secs))


def store_config(job_dir: Optional[str] = None, metadata_db: Optional[str] = None,
                 mysql_host: Optional[str] = None, mysql_port: int = DEFAULT_MYSQL_PORT,
                 mysql_database: str = DEFAULT_MYSQL_DATABASE, mysql_user: Optional[str] = None,
                 mysql_password_env: str = DEFAULT_PASSWORD_ENV) -> StoreConfig:
  """MySQL when `mysql_host` is given, else SQLite at `metadata_db` or <job_dir>/metadata.sqlite."""
  if mysql_host:
    if metadata_db:
      raise StoreError("choose one metadata store: --metadata_db (SQLite) or --mysql_host "
                       "(MySQL), not both")
    if not mysql_user:
      raise StoreError(f"MySQL store on {mysql_host}: --mysql_user is required")
    if not mysql_database:
      raise StoreError(f"MySQL store on {mysql_host}: --mysql_database must not be empty")
    if not 0 < mysql_port < 65536:
      raise StoreError(f"MySQL store on {mysql_host}: --mysql_port must be in 1..65535, "
                       f"got {mysql_port}")
    if not mysql_password_env:
      raise StoreError(f"MySQL store on {mysql_host}: --mysql_password_env must name an "
                       f"environment variable")
    return MySQLStore(mysql_host, mysql_user, mysql_port, mysql_database, mysql_password_env)
  if metadata_db:
    path, origin = metadata_db, "--metadata_db"
  elif job_dir:
    path, origin = f"{job_dir.rstrip('/')}/{DEFAULT_SQLITE_NAME}", "the job dir"
  else:
    raise StoreError("no metadata store: pass --job-dir (SQLite in the job dir), "
                     "--metadata_db PATH or --mysql_host")
  if "://" in path:
    raise StoreError(f"the SQLite metadata store must be a local file, but {origin} puts it "
                     f"at {path}; pass --metadata_db /local/path, or use MySQL (--mysql_host)")
  return SqliteStore(os.path.abspath(path))


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the store flags on `flag_values`; read them back with `config_from_flags`."""
  flags.DEFINE_string(
      "metadata_db", None,
      f"SQLite file of the ML Metadata store (default: <job-dir>/{DEFAULT_SQLITE_NAME}).",
      flag_values=flag_values)
  flags.DEFINE_string("mysql_host", None,
                      "Record lineage in MySQL on this host instead of SQLite.",
                      flag_values=flag_values)
  flags.DEFINE_integer("mysql_port", DEFAULT_MYSQL_PORT, "MySQL port.",
                       flag_values=flag_values)
  flags.DEFINE_string("mysql_database", DEFAULT_MYSQL_DATABASE,
                      "MySQL database (created if the user may).", flag_values=flag_values)
  flags.DEFINE_string("mysql_user", None, "MySQL user.", flag_values=flag_values)
  flags.DEFINE_string("mysql_password_env", DEFAULT_PASSWORD_ENV,
                      "Environment variable holding the MySQL password (never a flag).",
                      flag_values=flag_values)


def config_from_flags(job_dir: Optional[str],
                      flag_values: flags.FlagValues = flags.FLAGS) -> StoreConfig:
  return store_config(job_dir, flag_values.metadata_db, flag_values.mysql_host,
                      flag_values.mysql_port, flag_values.mysql_database,
                      flag_values.mysql_user, flag_values.mysql_password_env)


def is_transient(error: BaseException) -> bool:
  if isinstance(error, mlmd_errors.AbortedError):
    return True
  if not isinstance(error, (mlmd_errors.StatusError, RuntimeError)):
    return False
  message = str(error).lower()
  return any(marker in message for marker in _TRANSIENT_MARKERS)


def with_retries(call: Callable[[], T], what: str, policy: RetryPolicy) -> T:
  def log_retry(state: tenacity.RetryCallState) -> None:
    error = state.outcome.exception()
    logging.info("%s: store busy (%s); retry %d of %d in %.2fs", what,
                 str(error).splitlines()[0][:120], state.attempt_number, policy.attempts - 1,
                 state.next_action.sleep)

  return policy.retrying(tenacity.retry_if_exception(is_transient),
                         before_sleep=log_retry)(call)


class _RetryingStore:
  """A MetadataStore whose every call retries transient failures under one policy."""

  def __init__(self, store: mlmd.MetadataStore, policy: RetryPolicy):
    self._store = store
    self._policy = policy

  def __getattr__(self, name):
    method = getattr(self._store, name)
    if not callable(method):
      return method

    def call(*args, **kwargs):
      return with_retries(lambda: method(*args, **kwargs), name, self._policy)
    return call


class _HidePassword(std_logging.Filter):
  """MLMD logs its whole ConnectionConfig, password included, at DEBUG level."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return "ConnectionConfig" not in str(record.msg)


class LineageStore:
  """An open store with the project's types registered; `mlmd` is the retrying client."""

  def __init__(self, config: StoreConfig, client: mlmd.MetadataStore, policy: RetryPolicy):
    self.config = config
    self.mlmd = _RetryingStore(client, policy)
    self.policy = policy
    self._type_ids: Dict[str, int] = {}
    self._type_names: Dict[int, str] = {}
    self._register_types()

  def describe(self) -> str:
    return self.config.describe()

  def type_id(self, name: str) -> int:
    try:
      return self._type_ids[name]
    except KeyError:
      raise ValueError(f"unknown lineage type {name!r}; known: {sorted(self._type_ids)}") from None

  def type_name(self, type_id: int) -> str:
    """The name of one of our types, or '' for a type another tool registered."""
    return self._type_names.get(type_id, "")

  def _register_types(self) -> None:
    # can_add_fields: a newer version of this code may add properties to a stored type;
    # can_omit_fields: an older one still opens a store a newer one extended.
    registrations = (
        [(self.mlmd.put_artifact_type, metadata_store_pb2.ArtifactType, name, properties)
         for name, properties in schema.ARTIFACT_TYPES.items()]
        + [(self.mlmd.put_execution_type, metadata_store_pb2.ExecutionType, name, properties)
           for name, properties in schema.EXECUTION_TYPES.items()]
        + [(self.mlmd.put_context_type, metadata_store_pb2.ContextType, name, properties)
           for name, properties in schema.CONTEXT_TYPES.items()])
    for put, proto, name, properties in registrations:
      type_proto = proto(name=name)
      for key, kind in properties.items():
        type_proto.properties[key] = schema.STORED_TYPES[kind]
      # Another process may register it between our look-up and insert; a second put
      # then finds it.
      type_id = tenacity.Retrying(
          retry=tenacity.retry_if_exception_type(mlmd_errors.AlreadyExistsError),
          stop=tenacity.stop_after_attempt(2), reraise=True)(
              put, type_proto, can_add_fields=True, can_omit_fields=True)
      self._type_ids[name] = type_id
      self._type_names[type_id] = name


def open_store(config: StoreConfig, policy: RetryPolicy = RetryPolicy(),
               create: bool = True) -> LineageStore:
  """Connects (creating the SQLite file or MySQL tables if needed) and registers the types.

  With `create=False` a SQLite file that does not exist yet is an error, not a new store:
  a reader given the wrong job dir should hear so.
  """
  connection = metadata_store_pb2.ConnectionConfig()
  if isinstance(config, SqliteStore):
    if not create and not os.path.isfile(config.path):
      raise StoreError(f"no metadata store at {config.path}: nothing was recorded there "
                       f"(wrong --job-dir or --metadata_db?)")
    os.makedirs(os.path.dirname(config.path) or ".", exist_ok=True)
    connection.sqlite.filename_uri = config.path
    connection.sqlite.connection_mode = (
        metadata_store_pb2.SqliteMetadataSourceConfig.READWRITE_OPENCREATE)
  elif isinstance(config, MySQLStore):
    connection.mysql.host = config.host
    connection.mysql.port = config.port
    connection.mysql.database = config.database
    connection.mysql.user = config.user
    connection.mysql.password = config.password()
  else:
    raise TypeError(f"expected a SqliteStore or MySQLStore, got {type(config).__name__}")
  absl_logger = std_logging.getLogger("absl")
  hide_password = _HidePassword()
  absl_logger.addFilter(hide_password)
  try:
    client = with_retries(lambda: mlmd.MetadataStore(connection), "open", policy)
  except Exception as e:  # noqa: BLE001 -- MLMD raises bare RuntimeErrors with terse text
    hint = (f"is the server up, does {config.user} exist with the password in "
            f"${config.password_env}, and may it use (or create) database {config.database}?"
            if isinstance(config, MySQLStore) else "is the path writable?")
    raise StoreError(f"cannot open the metadata store {config.describe()}: "
                     f"{type(e).__name__}: {e} ({hint})") from e
  finally:
    absl_logger.removeFilter(hide_password)
  return LineageStore(config, client, policy)
