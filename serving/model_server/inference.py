"""What TF Serving's Predict, Classify, Regress and MultiInference (predict.py, classify.py,
regress.py, multi_inference.py) share, and the one way their steps are driven.

Each API is a generator over a servable handle (`servable.Servable`): it makes its checks in
the binary's order and words, yields the `SessionRun` it needs, receives the run's outputs and
returns its answer. The caller decides where the run is made: `answer` on the calling thread
(gRPC, warmup replay), `answer_async` from an event loop that must not block while a batch
forms (REST), so one copy of TF Serving's rules serves both. `Checks` are the settings the
APIs obey: whether signatures' method names are checked (--enable_signature_method_name_check)
and the request size limits.
"""

import dataclasses
from typing import Awaitable, Callable, Generator, Optional, Sequence, Tuple, TypeVar

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import model_pb2

from export.warmup import DEFAULT_SIGNATURE
from serving.model_server import tensors
from serving.model_server.servable import Offload, Outputs, Servable, SessionRun
from serving.model_server.status import invalid_argument

CLASSIFY_METHOD = tf.saved_model.CLASSIFY_METHOD_NAME
REGRESS_METHOD = tf.saved_model.REGRESS_METHOD_NAME
PREDICT_METHOD = tf.saved_model.PREDICT_METHOD_NAME

Answer = TypeVar("Answer")
Steps = Generator[SessionRun, Outputs, Answer]


@dataclasses.dataclass(frozen=True)
class Checks:
  check_method_name: bool = False
  limits: tensors.Limits = tensors.Limits()


async def _drive(steps: Steps[Answer], run: Callable[[SessionRun], Awaitable[Outputs]]
                 ) -> Answer:
  """The one loop over an API's steps: each run it asks for is awaited and its outputs sent
  back, or its error raised where the API asked, so the API's `with` blocks unwind."""
  try:
    needed = next(steps)
    while True:
      try:
        outputs = await run(needed)
      except BaseException as error:
        needed = steps.throw(error)
      else:
        needed = steps.send(outputs)
  except StopIteration as done:
    return done.value


def answer(steps: Steps[Answer], timeout_ms: Optional[int] = None) -> Answer:
  """The steps' answer, their runs made on this thread."""

  async def run_here(needed: SessionRun) -> Outputs:
    return needed.servable.run(needed, timeout_ms)

  driving = _drive(steps, run_here)
  try:
    # Nothing in it awaits anything that suspends, so one send runs it to its answer.
    driving.send(None)
  except StopIteration as done:
    return done.value
  raise RuntimeError("a session run on the calling thread suspended")


async def answer_async(steps: Steps[Answer], timeout_ms: Optional[int], offload: Offload
                       ) -> Answer:
  """The steps' answer from an event loop (see `Servable.run_async`)."""
  return await _drive(steps, lambda needed: needed.servable.run_async(needed, timeout_ms,
                                                                      offload))


def model_spec(servable: Servable, signature_name: str) -> model_pb2.ModelSpec:
  """The answer's ModelSpec (MakeModelSpec): the version that answered, and the signature,
  `serving_default` when the request left it empty."""
  spec = model_pb2.ModelSpec(name=servable.name,
                             signature_name=signature_name or DEFAULT_SIGNATURE)
  spec.version.value = servable.version
  return spec


def find_signature(servable: Servable, signature_name: str, checks: Checks, method: str,
                   kind: str) -> Tuple[str, meta_graph_pb2.SignatureDef]:
  """Classify's and Regress's lookup of a signature (Predict's has words of its own): its name
  (`serving_default` when the request left it empty) and the signature, whose method name
  must be `method` when the server checks method names."""
  name = signature_name or DEFAULT_SIGNATURE
  signatures = servable.signatures
  if name not in signatures:
    raise invalid_argument(f"No signature was found with the name: {name}")
  signature = signatures[name]
  if checks.check_method_name and signature.method_name != method:
    raise invalid_argument(f"Expected {kind} signature method_name to be {method}. Was: "
                           f"{signature.method_name}")
  return name, signature


def examples_tensor(examples: Sequence[bytes]) -> np.ndarray:
  """Serialized tf.Examples as the string tensor Classify and Regress feed."""
  if not examples:
    raise invalid_argument("Input is empty.")
  batch = np.empty(len(examples), dtype=object)
  batch[:] = list(examples)
  return batch
