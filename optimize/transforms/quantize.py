"""quantize_weights: large float weights stored as int8 with scales, or as float16."""

from typing import List, Optional, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import node_def_pb2

from optimize.transforms import oov_rows as oov_rows_lib
from optimize.transforms.contract import GraphContext
from optimize.transforms.freeze_and_cleanup import strip_unused_nodes
from optimize.transforms.graph import const_node
from optimize.transforms.graph import const_value
from optimize.transforms.graph import consumers
from optimize.transforms.graph import copy_graph
from optimize.transforms.graph import gather_like
from optimize.transforms.graph import node_name
from optimize.transforms.graph import op_node
from optimize.transforms.registry import Param
from optimize.transforms.registry import register

DEQUANTIZE_SUFFIX = "/dequantize"
# Constants holding quantized weights; constant folding must never see them, or it
# turns the 8-bit or 16-bit constants back into float ones.
QUANTIZED_SUFFIXES = ("/int8", "/float16", "/int4")


# Separates weight names in keep_float16 / keep_float32 (a spec's values cannot hold commas).
NAME_SEPARATOR = "|"
DEFAULT_MIN_ELEMENTS = 1024
# Reductions linear in each column of their data: a per-column scale can follow them.
_COMBINERS = frozenset({"SparseSegmentSum", "SparseSegmentMean", "SparseSegmentSqrtN",
                        "SparseSegmentSumWithNumSegments", "SparseSegmentMeanWithNumSegments",
                        "SparseSegmentSqrtNWithNumSegments"})
EMBEDDING_SCALES = ("auto", "per_row")
OOV_ROWS = ("int8", "int4")


@register("quantize_weights", params=[Param("dtype", str, "int8", choices=("int8", "float16")),
                                      Param("min_elements", int, DEFAULT_MIN_ELEMENTS, minimum=1),
                                      Param("keep_float16", str, ""),
                                      Param("keep_float32", str, ""),
                                      Param("embedding_scales", str, "auto",
                                            choices=EMBEDDING_SCALES),
                                      Param("oov_rows", str, "int8", choices=OOV_ROWS)],
          default_position=130, default_args={"dtype": "int8", "oov_rows": "int4"})
def quantize_weights(graph_def: graph_pb2.GraphDef, context: GraphContext,
                     dtype: str = "int8", min_elements: int = DEFAULT_MIN_ELEMENTS,
                     keep_float16: str = "", keep_float32: str = "",
                     embedding_scales: str = "auto",
                     oov_rows: str = "int8") -> graph_pb2.GraphDef:
  """Stores large float weights as int8 (per-channel scale) or float16.

  MatMul weights get one scale per output column and are dequantized before the
  MatMul. Embedding tables (GatherV2 params on axis 0) are gathered as int8, so only the
  gathered rows are ever float: no full float table is rebuilt at load or per request.
  With `embedding_scales=auto`, a table whose every gather is combined by a sparse segment
  reduction (sum, mean, sqrt-n: linear in each column) gets one scale per column, applied
  to the combined rows after the reduction: one multiply per example and column instead of
  one per gathered row and column. Other tables, and all with `per_row`, get one scale per
  row, gathered beside the rows. With `oov_rows=int4`, such a per-column table fed by a
  vocabulary lookup keeps its vocabulary rows int8 and stores its OOV-bucket rows in 4 bits
  (`oov_rows.py`): about 0.16x of the float tables' bytes instead of 0.25x, for a few more
  ops per request. The default pipeline asks for it; when the guard refuses it, the
  fallback's first plan stores every row int8. Weights with other consumers stay.
  Weights named in `keep_float16` are stored as float16 whatever `dtype` says, and those in
  `keep_float32` stay as they are (names separated by '|'): the plan the optimizer's
  accuracy-aware fallback chooses.
  """
  as_float16 = set(filter(None, keep_float16.split(NAME_SEPARATOR)))
  as_float32 = set(filter(None, keep_float32.split(NAME_SEPARATOR)))
  graph = copy_graph(graph_def)
  by_name = {n.name: n for n in graph.node}
  users = consumers(graph)
  new_nodes = []
  for name, per_row in _weights(graph, context, min_elements, by_name, users):
    if name in as_float32:
      continue
    node = by_name[name]
    combiners = _sole_combiners(users[name], users) if per_row else None
    if embedding_scales == "auto" and combiners and name not in as_float16:
      new_nodes.extend(_quantized_before_combiners(node, const_value(node), users[name],
                                                   combiners, oov_rows, by_name, context))
      continue
    new_nodes.extend(_quantized(node, const_value(node), users[name],
                                "float16" if name in as_float16 else dtype, per_row))
  graph.node.extend(new_nodes)
  return strip_unused_nodes(graph, context)


def quantizable_weights(graph_def: graph_pb2.GraphDef, context: GraphContext,
                        min_elements: int = DEFAULT_MIN_ELEMENTS) -> List[str]:
  """The weights quantize_weights would store compactly, by node name."""
  by_name = {n.name: n for n in graph_def.node}
  return [name for name, _ in _weights(graph_def, context, min_elements, by_name,
                                       consumers(graph_def))]


def _weights(graph, context, min_elements, by_name, users) -> List[Tuple[str, bool]]:
  """(name, per_row) of each large float weight whose every use can take a dequantized one;
  per_row for embedding tables, which are gathered by row."""
  found = []
  for node in graph.node:
    if node.op != "Const" or node.name in context.protected:
      continue
    if node.attr["dtype"].type != tf.float32.as_datatype_enum:
      continue
    shape = [d.size for d in node.attr["value"].tensor.tensor_shape.dim]
    if len(shape) != 2 or int(np.prod(shape)) < min_elements:
      continue
    use = users.get(node.name, [])
    if not use or not all(_is_weight_use(u, p, by_name) for u, p in use):
      continue
    gathers = [u for u, _ in use if u.op == "GatherV2"]
    if gathers and len(gathers) != len(use):
      continue
    found.append((node.name, bool(gathers)))
  return found


def _is_weight_use(user, position, by_name) -> bool:
  if user.input[position].startswith("^"):
    return False
  if user.op == "MatMul":
    return position == 1 and not user.attr["transpose_b"].b
  if user.op == "GatherV2":
    axis = by_name.get(node_name(user.input[2]))
    return (position == 0 and axis is not None and axis.op == "Const"
            and int(const_value(axis)) == 0 and user.attr["batch_dims"].i == 0)
  return False


def _quantized(node, value, use, dtype, per_row):
  """New nodes storing `value` compactly; rewires `use` to the dequantized tensors."""
  base, device = node.name, node.device
  float_type = tf.float32
  if dtype == "float16":
    stored = const_node(f"{base}/float16", value.astype(np.float16), device)
    scale = None
  else:
    quantized, scale = symmetric_int8(value, axis=1 if per_row else 0)
    stored = const_node(f"{base}/int8", quantized, device)
    scale = scale.reshape(-1)
  nodes = [stored]
  if not per_row:
    cast = op_node(f"{base}/cast", "Cast", [stored.name], device,
                   SrcT=tf.as_dtype(const_value(stored).dtype), DstT=float_type, Truncate=False)
    nodes.append(cast)
    if scale is None:
      cast.name = base + DEQUANTIZE_SUFFIX
      dequantized = cast.name
    else:
      scale_node = const_node(f"{base}/scale", scale.reshape(1, -1), device)
      cast.name = f"{base}/cast{DEQUANTIZE_SUFFIX}"
      nodes += [scale_node, op_node(base + DEQUANTIZE_SUFFIX, "Mul",
                                    [cast.name, scale_node.name], device, T=float_type)]
      dequantized = base + DEQUANTIZE_SUFFIX
    for user, position in use:
      user.input[position] = dequantized
    return nodes
  if scale is not None:
    # Shaped [rows, 1], so a gathered scale broadcasts over its row without an ExpandDims.
    nodes.append(const_node(f"{base}/scale", scale.reshape(-1, 1), device))
  for index, (gather, position) in enumerate(use):
    prefix = f"{base}/gather_{index}"
    gathered = gather_like(gather, f"{prefix}/rows", stored.name,
                           tf.as_dtype(const_value(stored).dtype), device)
    cast = op_node(f"{prefix}/cast" + ("" if scale is not None else DEQUANTIZE_SUFFIX), "Cast",
                   [gathered.name], device, SrcT=tf.as_dtype(const_value(stored).dtype),
                   DstT=float_type, Truncate=False)
    nodes += [gathered, cast]
    result = cast.name
    if scale is not None:
      row_scale = gather_like(gather, f"{prefix}/row_scale", f"{base}/scale", float_type,
                              device)
      multiply = op_node(f"{prefix}{DEQUANTIZE_SUFFIX}", "Mul", [cast.name, row_scale.name],
                         device, T=float_type)
      nodes += [row_scale, multiply]
      result = multiply.name
    # The gather node keeps its name (others refer to it) but becomes an Identity.
    gather.op = "Identity"
    del gather.input[:]
    gather.input.append(result)
    for attr in list(gather.attr):
      if attr != "_class":
        del gather.attr[attr]
    gather.attr["T"].type = float_type.as_datatype_enum
  return nodes


def symmetric_int8(value: np.ndarray, axis: int) -> Tuple[np.ndarray, np.ndarray]:
  """int8 codes of `value` and their float32 scales, one per slice along `axis` (kept as a
  dimension of size one); an all-zero slice gets scale 1."""
  scale = np.max(np.abs(value), axis=axis, keepdims=True) / 127.0
  scale[scale == 0] = 1.0
  return np.clip(np.round(value / scale), -127, 127).astype(np.int8), scale.astype(np.float32)


def _sole_combiners(use, users) -> Optional[List]:
  """Each gather's only consumer when that is a segment reduction reading it as data,
  in the order of `use`; None when any gather has another consumer."""
  combiners = []
  for gather, _ in use:
    gather_users = users.get(gather.name, [])
    if len(gather_users) != 1:
      return None
    combiner, position = gather_users[0]
    if combiner.op not in _COMBINERS or position != 0:
      return None
    combiners.append(combiner)
  return combiners


def _quantized_before_combiners(node, value, use, combiners, oov_rows, by_name, context):
  """int8 rows (OOV rows 4-bit when asked and found) with one scale per column, multiplied
  into each combiner's result."""
  base, device = node.name, node.device
  sizes = {oov_rows_lib.vocabulary_size(gather.input[1], by_name, context)
           for gather, _ in use}
  vocabulary_rows = sizes.pop() if len(sizes) == 1 else None
  split = oov_rows == "int4" and oov_rows_lib.can_split(value, vocabulary_rows)
  if split:
    codes, scale = symmetric_int8(value[:vocabulary_rows], axis=0)
    nodes = [const_node(f"{base}/vocabulary/int8", codes, device),
             *oov_rows_lib.oov_storage(base, value[vocabulary_rows:], scale, device)]
  else:
    codes, scale = symmetric_int8(value, axis=0)
    nodes = [const_node(f"{base}/int8", codes, device)]
  column_scale = const_node(f"{base}/column_scale", scale, device)
  nodes.append(column_scale)
  for index, ((gather, _), combiner) in enumerate(zip(use, combiners)):
    prefix = f"{base}/gather_{index}"
    if split:
      rows = oov_rows_lib.gathered_rows(base, prefix, gather, vocabulary_rows, device)
    else:
      gathered = gather_like(gather, f"{prefix}/rows", f"{base}/int8", tf.int8, device)
      rows = [gathered, op_node(f"{prefix}/cast", "Cast", [gathered.name], device,
                                SrcT=tf.int8, DstT=tf.float32, Truncate=False)]
    unscaled = node_def_pb2.NodeDef()
    unscaled.CopyFrom(combiner)
    unscaled.name = f"{combiner.name}/unscaled"
    unscaled.input[0] = rows[-1].name
    # The combiner keeps its name (others read it) and becomes the scaling multiply.
    combiner.op = "Mul"
    del combiner.input[:]
    combiner.input.extend([unscaled.name, column_scale.name])
    combiner.attr.clear()
    combiner.attr["T"].type = tf.float32.as_datatype_enum
    nodes += rows + [unscaled]
  return nodes
