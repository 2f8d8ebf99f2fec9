"""Why a smoke test could not bless a model: the outcomes of starting, waiting for and probing
a server. (The statuses a server answers requests with are serving/model_server/status.py.)"""


class SmokeTestError(Exception):
  """Why a smoke test could not bless a model; the verdict's reason."""
  server_log_tail = ""  # the server's last log lines, when a server was started


class ServerStartError(SmokeTestError):
  """The server never answered, exited, or missed the readiness deadline: worth a retry."""


class ModelLoadError(SmokeTestError):
  """The server itself reports that the model failed to load: a retry cannot help."""


class ProbeError(SmokeTestError):
  """No request can be built for a signature from the evaluation examples given."""
