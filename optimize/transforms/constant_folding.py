"""Grappler's stock passes, run once on a GraphDef: fold_constants and grappler."""

from typing import Sequence

from tensorflow.core.framework import graph_pb2
from tensorflow.core.framework import node_def_pb2
from tensorflow.core.protobuf import config_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow.core.protobuf import rewriter_config_pb2
from tensorflow.python.grappler import tf_optimizer

from optimize.transforms.contract import GraphContext
from optimize.transforms.contract import TransformError
from optimize.transforms.graph import prune_library
from optimize.transforms.quantize import QUANTIZED_SUFFIXES
from optimize.transforms.registry import Param
from optimize.transforms.registry import register


def run_grappler(graph_def: graph_pb2.GraphDef, context: GraphContext,
                 passes: Sequence[str]) -> graph_pb2.GraphDef:
  """Runs the named Grappler passes once, keeping protected nodes and quantized weights.

  Quantized constants are shown to Grappler as placeholders, so no pass can fold
  their dequantization back into a float constant; they are restored afterwards.
  """
  meta_graph = meta_graph_pb2.MetaGraphDef()
  meta_graph.graph_def.CopyFrom(graph_def)
  hidden = {}
  for node in meta_graph.graph_def.node:
    if node.op == "Const" and node.name.endswith(QUANTIZED_SUFFIXES):
      hidden[node.name] = node_def_pb2.NodeDef()
      hidden[node.name].CopyFrom(node)
      shape = node.attr["value"].tensor.tensor_shape
      node.op = "Placeholder"
      node.attr.clear()
      node.attr["dtype"].CopyFrom(hidden[node.name].attr["dtype"])
      node.attr["shape"].shape.CopyFrom(shape)
  keep = set(context.protected) | set(hidden)
  # Grappler keeps what the train_op collection names, under the same names.
  meta_graph.collection_def["train_op"].node_list.value.extend(sorted(keep))
  config = config_pb2.ConfigProto()
  rewrites = config.graph_options.rewrite_options
  rewrites.optimizers.extend(passes)
  rewrites.meta_optimizer_iterations = rewriter_config_pb2.RewriterConfig.ONE
  rewrites.min_graph_nodes = -1
  try:
    optimized = tf_optimizer.OptimizeGraph(config, meta_graph, verbose=False)
  except Exception as e:
    raise TransformError(f"grappler {list(passes)}: {e}") from e
  for node in optimized.node:
    if node.name in hidden:
      node.CopyFrom(hidden[node.name])
  return prune_library(optimized)


@register("fold_constants", default_position=60)
def fold_constants(graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
  return run_grappler(graph_def, context, ["constfold"])


@register("grappler", params=[
    Param("passes", str, "constfold,arithmetic,dependency,shape,pruning")])
def grappler(graph_def: graph_pb2.GraphDef, context: GraphContext,
             passes: str = "constfold,arithmetic,dependency,shape,pruning") -> graph_pb2.GraphDef:
  """Any of Grappler's stock passes; the remapper is left out, it emits fused _ ops.

  A spec separates arguments with commas, so there the passes are joined with '+':
  grappler(passes=constfold+arithmetic).
  """
  names = [p.strip() for p in passes.replace("+", ",").split(",") if p.strip()]
  if "remapper" in names:
    raise TransformError("grappler: the remapper emits fused internal ops; TF Serving applies "
                         "it at load time itself")
  return run_grappler(graph_def, context, names)
