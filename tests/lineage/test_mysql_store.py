"""The lineage on MySQL: a throwaway MariaDB/MySQL server on 127.0.0.1 with a temporary datadir.

Skips, saying why, when no server binary is installed (`.ci/install-mariadb` installs one),
unless REQUIRE_MYSQL=1 (as CI sets it): then a missing server is a failure, not a skip.
"""

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import portpicker
import pytest

from lineage import push
from lineage import query
from lineage import record
from lineage import store as store_lib
from tests.helpers import PROJECT_ROOT
from tests.lineage import lineage_chain

# Trains a model or starts processes: the slow tier.
pytestmark = pytest.mark.slow

_START_SECS = 60
PASSWORD_ENV = "LINEAGE_TEST_MYSQL_PASSWORD"


def _find(*names: str):
  for name in names:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found:
      return found
  return None


def _wait_until_listening(server: subprocess.Popen, port: int, log: str) -> None:
  deadline = time.monotonic() + _START_SECS
  while time.monotonic() < deadline:
    if server.poll() is not None:
      break
    try:
      with socket.create_connection(("127.0.0.1", port), timeout=1):
        return
    except OSError:
      time.sleep(0.2)
  with open(log) as f:
    tail = f.read()[-3000:]
  pytest.fail(f"the MySQL server did not listen on 127.0.0.1:{port} within {_START_SECS}s "
              f"(exit code {server.poll()}); its log:\n{tail}")


@pytest.fixture(scope="module")
def mysql_server():
  """(host, port, database, user, password) of a server started for this module."""
  server_binary = _find("mariadbd", "mysqld")
  install_db = _find("mariadb-install-db", "mysql_install_db")
  if not server_binary or not install_db:
    missing = ("no MySQL server: neither mariadbd nor mysqld (with mariadb-install-db) is "
               "installed; .ci/install-mariadb installs Debian's mariadb-server")
    if os.environ.get("REQUIRE_MYSQL") == "1":
      pytest.fail(f"REQUIRE_MYSQL=1 but {missing}")
    pytest.skip(missing)
  # Short: the server's Unix socket path must fit in 108 bytes.
  root = tempfile.mkdtemp(prefix="lineage-mysql-")
  datadir, log = os.path.join(root, "data"), os.path.join(root, "server.log")
  as_root = ["--user=root"] if os.geteuid() == 0 else []
  installed = subprocess.run(
      [install_db, "--no-defaults", f"--datadir={datadir}", "--auth-root-authentication-method"
       "=normal", "--skip-test-db", *as_root], capture_output=True, text=True, timeout=300)
  if installed.returncode != 0:
    shutil.rmtree(root, ignore_errors=True)
    pytest.fail(f"{install_db} failed:\n{installed.stdout[-2000:]}{installed.stderr[-2000:]}")
  password = secrets.token_hex(12)
  init = os.path.join(root, "init.sql")
  with open(init, "w") as f:
    f.write(f"CREATE DATABASE lineage;\n"
            f"CREATE USER 'lineage'@'127.0.0.1' IDENTIFIED BY '{password}';\n"
            f"GRANT ALL PRIVILEGES ON lineage.* TO 'lineage'@'127.0.0.1';\n")
  port = portpicker.pick_unused_port()
  server = subprocess.Popen(
      [server_binary, "--no-defaults", f"--datadir={datadir}", "--bind-address=127.0.0.1",
       f"--port={port}", f"--socket={root}/mysqld.sock", f"--pid-file={root}/mysqld.pid",
       f"--init-file={init}", "--skip-log-bin", f"--log-error={log}", *as_root],
      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    _wait_until_listening(server, port, log)
    yield "127.0.0.1", port, "lineage", "lineage", password
  finally:
    server.terminate()
    try:
      server.wait(timeout=60)
    except subprocess.TimeoutExpired:
      server.kill()
      server.wait()
    shutil.rmtree(root, ignore_errors=True)


def test_the_lineage_on_mysql(mysql_server, tmp_path, monkeypatch):
  host, port, database, user, password = mysql_server
  monkeypatch.setenv(PASSWORD_ENV, password)
  config = store_lib.store_config(mysql_host=host, mysql_port=port, mysql_database=database,
                                  mysql_user=user, mysql_password_env=PASSWORD_ENV)
  store = store_lib.open_store(config)
  job_dir = str(tmp_path / "job")
  done = lineage_chain.record_chain(record.Recorder(store, job_dir), str(tmp_path),
                                    push_to=str(tmp_path / "serving"))
  # Types are reused by the next connection; a second run pushes the next version.
  again = store_lib.open_store(config)
  assert again.type_id("PushedModel") == store.type_id("PushedModel")
  push.push(record.Recorder(again, job_dir), done["optimized"], str(tmp_path / "serving"))
  with pytest.raises(push.PushRefused, match="no smoke test of ExportedModel"):
    push.push(record.Recorder(again, job_dir), done["exported"], str(tmp_path / "serving"))

  chain = query.describe_chain(again, job_dir, model_version=1)
  assert chain["store"] == f"mysql://{user}@{host}:{port}/{database}"
  assert chain["verdict"]["artifact"]["properties"]["blessed"] is True
  assert chain["train"]["execution"]["properties"]["hyperparameters"] == (
      lineage_chain.HYPERPARAMETERS)

  # The command, with MLMD's debug logging on: the password must appear nowhere.
  completed = subprocess.run(
      [sys.executable, "-m", "lineage", "--job-dir", job_dir, f"--mysql_host={host}",
       f"--mysql_port={port}", f"--mysql_database={database}", f"--mysql_user={user}",
       f"--mysql_password_env={PASSWORD_ENV}", "--verbosity=1"],
      capture_output=True, text=True, timeout=120, cwd=PROJECT_ROOT,
      env=dict(os.environ, PYTHONPATH=PROJECT_ROOT))
  assert completed.returncode == 0, completed.stderr[-3000:]
  assert completed.stdout.startswith(f"Lineage of version 2 pushed to {tmp_path}/serving")
  assert "BLESSED (embedded)" in completed.stdout
  assert password not in completed.stdout + completed.stderr


def test_a_wrong_password_is_a_clear_error(mysql_server, monkeypatch):
  host, port, database, user, password = mysql_server
  monkeypatch.setenv(PASSWORD_ENV, "not-" + password)
  config = store_lib.store_config(mysql_host=host, mysql_port=port, mysql_database=database,
                                  mysql_user=user, mysql_password_env=PASSWORD_ENV)
  with pytest.raises(store_lib.StoreError,
                     match=f"cannot open the metadata store mysql://{user}@{host}:{port}/"
                           f"{database}.*password in \\${PASSWORD_ENV}") as raised:
    store_lib.open_store(config, store_lib.RetryPolicy(attempts=1))
  assert password not in str(raised.value)
