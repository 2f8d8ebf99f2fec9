"""Answers as TF Serving's REST API writes them (util/json_tensor.cc): `predictions` / `outputs`
(a lone output loses its name), `results` (`[label, score]` pairs, or values), outputs named
`*_bytes` as `{"b64": ...}`, NaN / Infinity; errors as `{"error": message}`.

orjson writes the tensors straight from numpy, many times faster than formatting each value in
Python (benchmarks/classify_answers.py measures answers both ways). A float is written
as the shortest text that reads back as the same float32 (or float64): the value TF Serving
writes, whose text can be longer (it takes `%g` when that round-trips, else `%.9g`). Answers
orjson cannot write as TF Serving does (NaN or Infinity, text that is not UTF-8, `*_bytes`
outputs) are written value by value, with TF Serving's own formatting.
"""

import base64
import functools
import json
from typing import List, Mapping, Sequence

import numpy as np
import orjson
import tensorflow as tf

from serving.model_server.results import Classifications, LabelTemplates, Regressions
from serving.model_server.tensors import INT_RANGES, type_name
from serving.model_server.status import invalid_argument, truncated

_BYTES_SUFFIX = "_bytes"

def _float_texts(values: np.ndarray) -> List[str]:
  """WriteDecimal(): '%g', or full precision when '%g' does not round-trip."""
  digits = 9 if values.dtype == np.float32 else 17
  as_python = values.tolist()
  texts = ["%g" % v for v in as_python]
  finite = np.isfinite(values)
  with np.errstate(all="ignore"):
    round_trip = np.array([float(t) if f else 0.0 for t, f in zip(texts, finite)],
                          dtype=np.float64).astype(values.dtype)
  result = []
  for value, text, ok, is_finite in zip(as_python, texts, round_trip == values, finite):
    if not is_finite:
      result.append("NaN" if value != value else ("-Infinity" if value < 0 else "Infinity"))
      continue
    if not ok:
      text = "%.*g" % (digits, value)
    if "." not in text and "e" not in text:
      text += ".0"
    result.append(text)
  return result


def _string_text(value: bytes, as_bytes: bool) -> str:
  if as_bytes:
    return '{"b64": "' + base64.b64encode(value).decode("ascii") + '"}'
  # TF Serving writes the raw bytes; surrogateescape keeps bytes that are not UTF-8 as they are.
  return json.dumps(value.decode("utf-8", "surrogateescape"), ensure_ascii=False)


def _value_texts(name: str, array: np.ndarray) -> List[str]:
  flat = array.reshape(-1)
  dtype = tf.as_dtype(array.dtype)
  if dtype in (tf.float32, tf.float64):
    return _float_texts(flat)
  if dtype == tf.string:
    as_bytes = name.endswith(_BYTES_SUFFIX)
    return [_string_text(v, as_bytes) for v in flat]
  if dtype == tf.bool:
    return ["true" if v else "false" for v in flat.tolist()]
  if dtype in INT_RANGES:
    return [str(v) for v in flat.tolist()]
  raise invalid_argument(f"Failed to write JSON value for tensor type: {type_name(dtype)}")


def _nest(texts: List[str], shape: Sequence[int]) -> str:
  if not shape:
    return texts[0]
  if len(shape) == 1:
    return "[" + ",".join(texts) + "]"
  step = int(np.prod(shape[1:], dtype=np.int64))
  return "[" + ",".join(_nest(texts[i * step:(i + 1) * step], shape[1:])
                        for i in range(shape[0])) + "]"


@functools.lru_cache(maxsize=4096)
def _key(name: str) -> str:
  """A JSON string of an output name or class label; they repeat across answers."""
  return json.dumps(name, ensure_ascii=False)


_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def _decoded(array: np.ndarray):
  """A string tensor as nested lists of text, or None when a value is not UTF-8."""
  try:
    return np.frompyfunc(lambda v: v.decode("utf-8"), 1, 1)(array).tolist() \
        if array.ndim else array.item().decode("utf-8")
  except UnicodeDecodeError:
    return None


def _plain(name: str, array: np.ndarray):
  """What orjson writes as TF Serving would: the array itself, its text, or None."""
  dtype = tf.as_dtype(array.dtype)
  if dtype == tf.string:
    return None if name.endswith(_BYTES_SUFFIX) else _decoded(array)
  if dtype.is_floating:
    return array if dtype in (tf.float32, tf.float64) and np.isfinite(array).all() else None
  if dtype == tf.bool or dtype in INT_RANGES:
    return array
  raise invalid_argument(f"Failed to write JSON value for tensor type: {type_name(dtype)}")


def _check_batch(outputs: Mapping[str, np.ndarray]) -> int:
  batch = None
  for name, array in outputs.items():
    if array.ndim == 0:
      raise invalid_argument(f"Tensor name: {name} has no shape information ")
    if batch is not None and array.shape[0] != batch:
      raise invalid_argument(f"Tensor name: {name} has inconsistent batch size: "
                             f"{array.shape[0]} expecting: {batch}")
    batch = array.shape[0]
  return batch


def predict_response(outputs: Mapping[str, np.ndarray], row_format: bool) -> bytes:
  if not outputs:
    raise invalid_argument("Cannot convert empty tensor map to JSON")
  batch = _check_batch(outputs) if row_format else None
  plain = {name: _plain(name, array) for name, array in outputs.items()}
  if any(value is None for value in plain.values()):
    return _predict_response_by_value(outputs, row_format, batch)
  named = len(outputs) > 1
  if not row_format:
    return orjson.dumps({"outputs": plain if named else next(iter(plain.values()))},
                        option=_NUMPY)
  if not named:
    return orjson.dumps({"predictions": next(iter(plain.values()))}, option=_NUMPY)
  rows = [{name: value[i] for name, value in plain.items()} for i in range(batch)]
  return orjson.dumps({"predictions": rows}, option=_NUMPY)


def _predict_response_by_value(outputs, row_format: bool, batch) -> bytes:
  texts = {name: _value_texts(name, array) for name, array in outputs.items()}
  named = len(outputs) > 1
  if not row_format:
    parts = [(_key(n) + ":" if named else "") + _nest(texts[n], outputs[n].shape)
             for n in outputs]
    body = "{" + ",".join(parts) + "}" if named else parts[0]
    return _encode('{"outputs":' + body + "}")
  rows = []
  for item in range(batch):
    parts = []
    for name, array in outputs.items():
      step = int(np.prod(array.shape[1:], dtype=np.int64))
      value = _nest(texts[name][item * step:(item + 1) * step], array.shape[1:])
      parts.append(_key(name) + ":" + value if named else value)
    rows.append("{" + ",".join(parts) + "}" if named else parts[0])
  return _encode('{"predictions":[' + ",".join(rows) + "]}")


def classify_response(result: Classifications) -> bytes:
  """Classifications as `{"results": [[[label, score], ...], ...]}`."""
  reference = result.classes if result.classes is not None else result.scores
  if reference is None or not reference.shape[0]:
    raise invalid_argument("Cannot convert empty ClassificationResults to JSON")
  size, count = reference.shape
  if count and result.classes is not None and result.scores is not None:
    answer = _classify_response_from_templates(result.classes, result.scores)
    if answer is not None:
      return answer
  labels = result.labels() or [[""] * count] * size
  scores = result.scores
  if scores is not None and not np.isfinite(scores).all():
    items = ["[" + ",".join(f"[{_key(label)},{score}]" for label, score in
                            zip(row, _float_texts(scores[i]))) + "]"
             for i, row in enumerate(labels)]
    return _encode('{"results":[' + ",".join(items) + "]}")
  if scores is None:
    scores = np.zeros((size, count), dtype=np.float32)
  # Iterating a float32 row gives numpy float32 scalars, which orjson writes as float32 text.
  return orjson.dumps({"results": [list(zip(row, scores[i])) for i, row in enumerate(labels)]},
                      option=_NUMPY)


def _classify_response_from_templates(classes: np.ndarray, scores: np.ndarray):
  """The answer from one orjson call on the scores and a template per row of labels, kept
  from the row's second answer on (`results.LabelTemplates`). None when a row has no
  template yet, a score is not finite (orjson writes it as null, TF Serving as NaN /
  Infinity) or a label is not UTF-8: the value-by-value path then writes or refuses it.

  A classifier answers the same labels in every row and every request (an estimator's are
  its vocabulary), so their JSON is written once, not again for each request. On the
  Banking77 model (77 classes) a whole REST Classify answered in-process saves more than
  the answer's own time: the interpreter's work between session runs slows the runs down
  too. benchmarks/classify_answers.py measures both ways."""
  try:
    templates = [_ROW_TEMPLATES.get(tuple(labels)) for labels in classes]
  except UnicodeDecodeError:
    return None
  if not all(templates):
    return None
  texts = orjson.dumps(scores, option=_NUMPY)
  if b"null" in texts:
    return None
  parts = [template % tuple(row.split(b","))
           for template, row in zip(templates, texts[2:-2].split(b"],["))]
  return b'{"results":[' + b",".join(parts) + b"]}"


def _row_template(labels: tuple) -> bytes:
  """`[["label",%s],...]` for a row of labels (bytes), each score left as a `%s` to fill."""
  pairs = (b"[" + orjson.dumps(label.decode("utf-8")).replace(b"%", b"%%") + b",%s]"
           for label in labels)
  return b"[" + b",".join(pairs) + b"]"


_ROW_TEMPLATES = LabelTemplates(_row_template)


def regress_response(result: Regressions) -> bytes:
  if not result.values.size:
    raise invalid_argument("Cannot convert empty RegressionResults to JSON")
  values = result.values.astype(np.float32)
  if not np.isfinite(values).all():
    return _encode('{"results":[' + ",".join(_float_texts(values)) + "]}")
  return orjson.dumps({"results": values}, option=_NUMPY)


def error_body(message: str) -> bytes:
  """`{"error": message}`, always valid UTF-8 JSON: what cannot be encoded (a lone surrogate,
  bytes of the request that were not UTF-8) is written as a \\u escape."""
  return json.dumps({"error": truncated(message)}, ensure_ascii=False).encode(
      "utf-8", "backslashreplace")


def _encode(text: str) -> bytes:
  return text.encode("utf-8", "surrogateescape")
