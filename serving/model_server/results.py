"""The answers of Classify and Regress as TF Serving checks them, held as arrays: the gRPC
answer is built from them as a proto (`to_proto`), the REST one straight as JSON
(json_answers.py). `LabelTemplates` keeps what both write once per row of class labels.
"""

import dataclasses
import threading
from typing import Callable, Dict, Generic, List, Optional, Sequence, Tuple, TypeVar

import grpc
import numpy as np
from tensorflow_serving.apis import classification_pb2
from tensorflow_serving.apis import regression_pb2

from serving.model_server.status import ServingError

Template = TypeVar("Template")


@dataclasses.dataclass(frozen=True)
class Classifications:
  """A Classify answer, as arrays [batch, classes]."""
  classes: Optional[np.ndarray]
  scores: Optional[np.ndarray]

  def to_proto(self) -> classification_pb2.ClassificationResult:
    if self.classes is not None and self.scores is not None and self.classes.shape[1]:
      try:
        rows = [_WIRE_TEMPLATES.get(tuple(labels)) for labels in self.classes]
        if all(rows):
          return classification_pb2.ClassificationResult.FromString(b"".join(
              row.filled(scores) for row, scores in zip(rows, self.scores)))
      except UnicodeDecodeError:
        pass  # `labels()` names the example
    result = classification_pb2.ClassificationResult()
    size, count = (self.classes if self.classes is not None else self.scores).shape
    labels = self.labels()
    scores = self.scores.tolist() if self.scores is not None else None
    for i in range(size):
      classes = result.classifications.add().classes
      for c in range(count):
        entry = classes.add()
        if labels is not None:
          entry.label = labels[i][c]
        if scores is not None:
          entry.score = scores[i][c]
    return result

  def labels(self) -> Optional[List[List[str]]]:
    """The class labels as text, which the ClassificationResult proto requires."""
    if self.classes is None:
      return None
    rows = []
    for i, row in enumerate(self.classes):
      try:
        rows.append([label.decode("utf-8") for label in row])
      except UnicodeDecodeError:
        raise ServingError(grpc.StatusCode.INTERNAL,
                           f"a class label of example {i} is not UTF-8, which the "
                           f"ClassificationResult proto requires") from None
    return rows


def _varint(value: int) -> bytes:
  out = bytearray()
  while value > 0x7F:
    out.append(value & 0x7F | 0x80)
    value >>= 7
  out.append(value)
  return bytes(out)


def _length_delimited_field_1(payload: bytes) -> bytes:
  return b"\x0a" + _varint(len(payload)) + payload


class _ClassificationsWire:
  """One row of a ClassificationResult on the wire, its labels written once and its scores
  filled in for each answer, parsed by protobuf's C code in one call.

  A classifier answers the same labels in every row and every request, and adding its
  classes one by one through Python's protobuf API costs several times more than filling
  the row's bytes and parsing them (benchmarks/classify_answers.py measures both). Each class
  is `label` (field 1) and `score` (field 2, a 4-byte little-endian float), so every score
  sits at a fixed offset of the row's bytes."""

  def __init__(self, labels: Sequence[bytes]):
    entries, offsets, size = [], [], 0
    for label in labels:
      label.decode("utf-8")  # a string field must be UTF-8, or protobuf refuses to parse it
      entry = _length_delimited_field_1(
          _length_delimited_field_1(label) + b"\x15" + b"\0\0\0\0")
      offsets.append(size + len(entry) - 4)
      entries.append(entry)
      size += len(entry)
    header = b"\x0a" + _varint(size)
    self._template = header + b"".join(entries)
    self._score_bytes = (np.array(offsets)[:, None] + len(header) + np.arange(4)).reshape(-1)

  def filled(self, scores: np.ndarray) -> bytes:
    row = bytearray(self._template)
    np.frombuffer(row, dtype=np.uint8)[self._score_bytes] = \
        scores.astype("<f4").view(np.uint8)
    return bytes(row)


class LabelTemplates(Generic[Template]):
  """Answer templates for rows of class labels (tuples of bytes), each built the second time
  its row is answered, at most `size` kept. A classifier that answers the same labels every
  time (an estimator's vocabulary) has its template from its second answer on; one whose
  rows keep changing (a top-k classifier's) never pays for templates it would not reuse:
  building one costs up to twice what writing the answer value by value does."""

  def __init__(self, build: Callable[[Tuple[bytes, ...]], Template], size: int = 64):
    self._build = build
    self._size = size
    self._templates: Dict[Tuple[bytes, ...], Template] = {}
    self._seen: Dict[Tuple[bytes, ...], None] = {}
    self._lock = threading.Lock()

  def get(self, labels: Tuple[bytes, ...]) -> Optional[Template]:
    """The row's template, None the first time the row is seen; `build`'s errors (labels
    that are not UTF-8) pass through."""
    template = self._templates.get(labels)
    if template is not None:
      return template
    with self._lock:
      if labels not in self._seen:
        self._keep(self._seen, labels, None)
        return None
    template = self._build(labels)
    with self._lock:
      self._keep(self._templates, labels, template)
    return template

  def _keep(self, entries: dict, labels, value) -> None:
    if len(entries) >= self._size:
      del entries[next(iter(entries))]  # the oldest
    entries[labels] = value


_WIRE_TEMPLATES = LabelTemplates(_ClassificationsWire)


@dataclasses.dataclass(frozen=True)
class Regressions:
  """A Regress answer, checked, as an array [batch]."""
  values: np.ndarray

  def to_proto(self) -> regression_pb2.RegressionResult:
    result = regression_pb2.RegressionResult()
    for value in self.values.tolist():
      result.regressions.add(value=value)
    return result
