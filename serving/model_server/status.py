"""TF Serving's statuses: the error a request or a load fails with, and its HTTP mapping."""

import grpc
import tensorflow as tf

# TF Serving's http_server.cc ToHTTPStatusCode, so a REST client sees what the real server sends.
_HTTP_STATUS = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# TF Serving cuts longer messages (grpc_status_util.cc), so one bad request cannot make an
# error the size of the request.
_MAX_MESSAGE_CHARS = 1024


class ServingError(Exception):
  """A request or a load that fails with a TF Serving status (code + message)."""

  def __init__(self, code: grpc.StatusCode, message: str):
    super().__init__(message)
    self.code = code
    self.message = message

  @property
  def http_status(self) -> int:
    return _HTTP_STATUS[self.code]

  def __str__(self):
    # absl::Status::ToString(), which TF Serving embeds in wrapped messages.
    return f"{self.code.name}: {self.message}"

  @classmethod
  def from_code_number(cls, number: int, message: str) -> "ServingError":
    """From a numeric canonical code, as `tf.errors.OpError.error_code` carries."""
    return cls(_BY_NUMBER.get(number, grpc.StatusCode.UNKNOWN), message)


def truncated(message: str) -> str:
  """A message as it goes on the wire, gRPC's status or REST's `{"error": ...}`."""
  if len(message) > _MAX_MESSAGE_CHARS:
    return message[:_MAX_MESSAGE_CHARS] + "...TRUNCATED"
  return message


def invalid_argument(message: str) -> ServingError:
  return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
  return ServingError(grpc.StatusCode.NOT_FOUND, message)


def from_tf_error(error: Exception) -> ServingError:
  """The TF Serving status of an error the TensorFlow runtime (or a loader) raised."""
  if isinstance(error, ServingError):
    return error
  if isinstance(error, tf.errors.OpError):
    # The Python session re-raises the runtime's error with a traceback-style preamble; the
    # error it handled carries the message TF Serving would give.
    original = error.__context__
    if isinstance(original, tf.errors.OpError) and original.error_code == error.error_code:
      error = original
    return ServingError.from_code_number(error.error_code, error.message)
  cause = error.__cause__
  if isinstance(cause, tf.errors.OpError):
    return ServingError.from_code_number(cause.error_code, str(error))
  return ServingError(grpc.StatusCode.UNKNOWN, str(error))
