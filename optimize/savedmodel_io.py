"""Reads a SavedModel's serving meta graph and writes an optimized one back.

The one place the optimizer touches the file system. What TF Serving needs from a
version dir survives the round trip: every signature, the main op (table
initializers), asset files and the AssetFileDefs that feed their paths at load time,
and `assets.extra/` (warmup records).
"""

import dataclasses
from typing import Dict, List, Mapping

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import op_def_pb2
from tensorflow.core.framework import types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow.core.protobuf import saver_pb2

from tensorflow.python.framework import op_def_registry

from export import artifact_io
from export.servable import SERVE_TAG
from optimize.transforms.graph import VARIABLE_OPS
from optimize.transforms.graph import consumers
from optimize.transforms.graph import node_name

MAIN_OP_KEYS = ("saved_model_main_op", "legacy_init_op")
ASSETS_KEY = "saved_model_assets"
# Larger assets are not vocabularies a transform needs the size of.
_MAX_COUNTED_ASSET_BYTES = 64 << 20


class SavedModelError(ValueError):
  """A directory that is not a servable SavedModel we can optimize."""


@dataclasses.dataclass
class Servable:
  """The parts of one SavedModel version that the optimizer reads and rewrites."""

  source_dir: str
  meta_graph: meta_graph_pb2.MetaGraphDef
  variable_values: Dict[str, np.ndarray]  # variable node name -> value

  @property
  def graph_def(self) -> graph_pb2.GraphDef:
    return self.meta_graph.graph_def

  @property
  def main_op(self) -> str:
    for key in MAIN_OP_KEYS:
      if key in self.meta_graph.collection_def:
        return self.meta_graph.collection_def[key].node_list.value[0]
    return ""

  def asset_file_defs(self) -> List[meta_graph_pb2.AssetFileDef]:
    """TF2 exports list assets in `asset_file_def`; TF1 builders in a collection."""
    defs = list(self.meta_graph.asset_file_def)
    if ASSETS_KEY in self.meta_graph.collection_def:
      for any_value in self.meta_graph.collection_def[ASSETS_KEY].any_list.value:
        asset = meta_graph_pb2.AssetFileDef()
        any_value.Unpack(asset)
        defs.append(asset)
    return defs

  def asset_paths(self) -> Dict[str, str]:
    """Asset tensor node name -> the asset file it names in the version dir."""
    return {node_name(a.tensor_info.name): artifact_io.join(self.source_dir, "assets", a.filename)
            for a in self.asset_file_defs()}

  def asset_line_counts(self) -> Dict[str, int]:
    """Asset tensor node name -> lines in its file, as a text-file table initializer counts
    them (a vocabulary's size)."""
    counts = {}
    for name, path in self.asset_paths().items():
      if tf.io.gfile.exists(path) and tf.io.gfile.stat(path).length <= _MAX_COUNTED_ASSET_BYTES:
        with tf.io.gfile.GFile(path, "rb") as f:
          counts[name] = len(f.read().splitlines())
    return counts

  def protected_nodes(self) -> List[str]:
    """Nodes that must keep their names: what signatures, the loader and assets refer to."""
    names = set(self.fed_nodes())
    names.update(node_name(info.name) for signature in self.meta_graph.signature_def.values()
                 for info in signature.outputs.values())
    if self.main_op:
      names.add(self.main_op)
    names.update(node_name(a.tensor_info.name) for a in self.asset_file_defs())
    return sorted(names)

  def fed_nodes(self) -> List[str]:
    """Nodes whose outputs a signature feeds."""
    return sorted({node_name(info.name) for signature in self.meta_graph.signature_def.values()
                   for info in signature.inputs.values()})


def read_servable(version_dir: str) -> Servable:
  """Loads the `serve` meta graph and the current value of every variable."""
  path = artifact_io.join(version_dir, "saved_model.pb")
  if not tf.io.gfile.exists(path):
    raise SavedModelError(f"{version_dir}: no saved_model.pb (pass a version directory, "
                          f"such as export/<model>/<version>)")
  saved_model = saved_model_pb2.SavedModel()
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      saved_model.ParseFromString(f.read())
  except Exception as e:  # protobuf raises its own DecodeError
    raise SavedModelError(f"{path}: not a SavedModel protocol buffer: {e}") from e
  serving = [m for m in saved_model.meta_graphs if list(m.meta_info_def.tags) == [SERVE_TAG]]
  if not serving:
    tags = [list(m.meta_info_def.tags) for m in saved_model.meta_graphs]
    raise SavedModelError(f"{version_dir}: no meta graph tagged exactly ['serve'] (found {tags})")
  meta_graph = serving[0]
  if not meta_graph.signature_def:
    raise SavedModelError(f"{version_dir}: the serve meta graph has no signatures")
  return Servable(version_dir, meta_graph, _variable_values(version_dir, meta_graph))


def _variable_values(version_dir: str, meta_graph) -> Dict[str, np.ndarray]:
  variables = [n for n in meta_graph.graph_def.node if n.op in VARIABLE_OPS]
  if not variables:
    return {}
  graph = tf.Graph()
  with tf.compat.v1.Session(graph=graph) as session:
    with graph.as_default():
      tf.compat.v1.saved_model.load(session, [SERVE_TAG], version_dir)
      fetches = {}
      for node in variables:
        handle = graph.get_tensor_by_name(node.name + ":0")
        fetches[node.name] = (tf.raw_ops.ReadVariableOp(resource=handle,
                                                        dtype=node.attr["dtype"].type)
                              if node.op == "VarHandleOp" else handle)
    return session.run(fetches)


# Constants above this size are written to variables/ instead of the GraphDef.
EXTERNALIZE_MIN_BYTES = 1 << 20
# Tables (constants only gathered from) from this size too: copied by Grappler at load, a
# table inline costs more than its restore. Smaller weights stay inline, where Grappler folds
# their dequantization once instead of on every call.
EXTERNALIZE_GATHERED_MIN_BYTES = 1 << 18
# String constants from this many elements too: Grappler copies each element on its own, so
# 128 stored rows of 77 class strings tripled Grappler's time at load.
EXTERNALIZE_STRINGS_MIN_ELEMENTS = 4096
_RESTORE_SCOPE = "externalized_constants"


def write_servable(source: Servable, graph_def: graph_pb2.GraphDef, output_dir: str,
                   overwrite: bool = False,
                   externalize_min_bytes: int = EXTERNALIZE_MIN_BYTES) -> str:
  """Writes `graph_def` with the source's signatures, main op and assets, atomically.

  Large constants (embedding tables) go to `variables/` as read-only tensors that the
  loader restores once: TF Serving runs Grappler over the GraphDef when it loads a
  model, and Grappler copies every constant it meets, so tables kept inline made the
  first request slower than the unoptimized model's.
  """
  if artifact_io.is_non_empty_dir(output_dir) and not overwrite:
    raise FileExistsError(f"{output_dir} exists and is not empty; pass overwrite to replace it")
  source_dir = source.source_dir.rstrip("/")
  if output_dir.rstrip("/") == source_dir:
    raise ValueError(f"{output_dir}: refusing to write over the input model")
  meta_graph = meta_graph_pb2.MetaGraphDef()
  meta_graph.meta_info_def.CopyFrom(source.meta_graph.meta_info_def)
  graph_def, stored = _externalize_large_constants(graph_def, externalize_min_bytes)
  meta_graph.meta_info_def.stripped_op_list.CopyFrom(_stripped_op_list(graph_def))
  meta_graph.graph_def.CopyFrom(graph_def)
  if stored:
    meta_graph.saver_def.CopyFrom(saver_pb2.SaverDef(
        filename_tensor_name=f"{_RESTORE_SCOPE}/filename:0",
        save_tensor_name=f"{_RESTORE_SCOPE}/saved:0",
        restore_op_name=f"{_RESTORE_SCOPE}/restore_all",
        version=saver_pb2.SaverDef.V2))
  for name, signature in source.meta_graph.signature_def.items():
    meta_graph.signature_def[name].CopyFrom(signature)
  if source.main_op:
    meta_graph.collection_def["saved_model_main_op"].node_list.value.append(source.main_op)
  present = {n.name for n in graph_def.node}
  assets = [a for a in source.asset_file_defs() if node_name(a.tensor_info.name) in present]
  meta_graph.asset_file_def.extend(assets)

  saved_model = saved_model_pb2.SavedModel(saved_model_schema_version=1)
  saved_model.meta_graphs.add().CopyFrom(meta_graph)
  with artifact_io.staging_dir(output_dir, overwrite=overwrite) as staging:
    tf.io.gfile.makedirs(artifact_io.join(staging, "variables"))
    if stored:
      names = sorted(stored)
      tf.raw_ops.SaveV2(prefix=artifact_io.join(staging, "variables", "variables"),
                        tensor_names=names, shape_and_slices=[""] * len(names),
                        tensors=[stored[n] for n in names])
    for asset in assets:
      tf.io.gfile.makedirs(artifact_io.join(staging, "assets"))
      tf.io.gfile.copy(artifact_io.join(source_dir, "assets", asset.filename),
                       artifact_io.join(staging, "assets", asset.filename), overwrite=True)
    extra = artifact_io.join(source_dir, "assets.extra")
    if tf.io.gfile.isdir(extra):
      artifact_io.copy_tree(extra, artifact_io.join(staging, "assets.extra"))
    with tf.io.gfile.GFile(artifact_io.join(staging, "saved_model.pb"), "wb") as f:
      f.write(saved_model.SerializeToString())
  return output_dir


def _externalize_large_constants(graph_def, min_bytes):
  """Turns each large Const X into a read of variable X/stored, restored at load.

  Returns the new graph and {checkpoint key: value}. Consumers still read tensor X.
  """
  users = consumers(graph_def)

  def large(node):
    tensor = node.attr["value"].tensor
    if tensor.dtype == types_pb2.DT_STRING:
      return len(tensor.string_val) >= EXTERNALIZE_STRINGS_MIN_ELEMENTS
    size = len(tensor.tensor_content)
    gathered = {user.op for user, _ in users.get(node.name, [])} == {"GatherV2"}
    return size >= min_bytes or (gathered and size >= EXTERNALIZE_GATHERED_MIN_BYTES)
  big = [n for n in graph_def.node if n.op == "Const" and large(n)]
  if not big:
    return graph_def, {}
  result = graph_pb2.GraphDef()
  result.CopyFrom(graph_def)
  stored, handles = {}, []
  by_name = {n.name: n for n in result.node}
  for original in big:
    node = by_name[original.name]
    value = tf.make_ndarray(node.attr["value"].tensor)
    dtype = node.attr["dtype"].type
    handle = result.node.add(name=f"{node.name}/stored", op="VarHandleOp", device=node.device)
    handle.attr["dtype"].type = dtype
    handle.attr["shape"].shape.CopyFrom(tf.TensorShape(value.shape).as_proto())
    handle.attr["shared_name"].s = handle.name.encode()
    node.op = "ReadVariableOp"
    node.attr.clear()
    node.attr["dtype"].type = dtype
    node.input.append(handle.name)
    stored[node.name] = value
    handles.append((node.name, handle.name, dtype))
  names = [name for name, _, _ in handles]
  scope = _RESTORE_SCOPE
  _add_const(result, f"{scope}/filename", np.array(b"model", dtype=object))
  _add_const(result, f"{scope}/tensor_names", np.array([n.encode() for n in names], dtype=object))
  _add_const(result, f"{scope}/shape_and_slices", np.array([b""] * len(names), dtype=object))
  restore = result.node.add(name=f"{scope}/restore", op="RestoreV2")
  restore.input.extend([f"{scope}/filename", f"{scope}/tensor_names", f"{scope}/shape_and_slices"])
  restore.attr["dtypes"].list.type.extend([dtype for _, _, dtype in handles])
  assigns = []
  for index, (_, handle, dtype) in enumerate(handles):
    assign = result.node.add(name=f"{scope}/assign_{index}", op="AssignVariableOp")
    assign.input.extend([handle, f"{scope}/restore:{index}" if index else f"{scope}/restore"])
    assign.attr["dtype"].type = dtype
    assigns.append("^" + assign.name)
  result.node.add(name=f"{scope}/restore_all", op="NoOp").input.extend(assigns)
  save = result.node.add(name=f"{scope}/save", op="SaveV2")
  save.input.extend([f"{scope}/filename", f"{scope}/tensor_names", f"{scope}/shape_and_slices"]
                    + names)
  save.attr["dtypes"].list.type.extend([dtype for _, _, dtype in handles])
  saved = result.node.add(name=f"{scope}/saved", op="Identity")
  saved.input.extend([f"{scope}/filename", f"^{save.name}"])
  saved.attr["T"].type = tf.string.as_datatype_enum
  return result, stored


def _add_const(graph_def, name, value):
  node = graph_def.node.add(name=name, op="Const")
  node.attr["dtype"].type = tf.as_dtype(value.dtype if value.dtype != object else tf.string) \
      .as_datatype_enum
  node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value))


def _stripped_op_list(graph_def) -> op_def_pb2.OpList:
  """The OpDefs the graph uses, as the SavedModel builder records them."""
  op_list = op_def_pb2.OpList()
  for op in sorted(ops_used(graph_def)):
    op_def = op_def_registry.get(op)
    if op_def is not None:
      op_list.op.add().CopyFrom(op_def)
  return op_list


def ops_used(graph_def: graph_pb2.GraphDef):
  return ({n.op for n in graph_def.node} |
          {n.op for f in graph_def.library.function for n in f.node_def})


def directory_bytes(path: str) -> int:
  return sum(tf.io.gfile.stat(artifact_io.join(d, f)).length
             for d, _, files in tf.io.gfile.walk(path) for f in files)


def op_histogram(graph_def: graph_pb2.GraphDef) -> Mapping[str, int]:
  counts: Dict[str, int] = {}
  for node in graph_def.node:
    counts[node.op] = counts.get(node.op, 0) + 1
  return counts
