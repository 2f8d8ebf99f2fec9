"""Graph rewrites in the spirit of the Graph Transform Tool: pure GraphDef -> GraphDef.

Every transform takes the graph and a `GraphContext` (the nodes whose names the
signatures, the loader and the assets refer to, and the variables' values) and returns
a new graph; none touches the input or the file system. Protected nodes always
survive under their own names, so signatures stay valid without being rewritten.

The rest of the project uses only what this module exports: `parse_transforms` turns
a spec such as 'freeze remove_nodes(op=Identity) quantize_weights(dtype=int8)' into
`TransformSpec`s to `apply`, `DEFAULT_TRANSFORMS` is the default pipeline, `names()`
lists the transforms, and `TransformError` is what any of it raises.

Layout, as in GTT, one family of transforms per module, each registering its
transforms with `registry.register` beside their functions:

  contract.py            GraphContext and TransformError
  graph.py               GraphDef utilities every family uses
  patterns.py            OpTypePattern, to state a chain of producers as one value
  registry.py            names, typed parameters, the default pipeline
  specs.py               the spec parser and TransformSpec
  freeze_and_cleanup.py  freeze, strip_unused_nodes, remove_nodes, remove_asserts,
                         merge_duplicate_nodes, remove_identity_reshapes
  constant_folding.py    fold_constants, grappler (Grappler's own passes)
  batch_norms.py         fold_batch_norms
  quantize.py            quantize_weights
  oov_rows.py            quantize_weights(oov_rows=int4): vocabulary rows int8, OOV rows 4-bit
  embedding_lookups.py   lean_embedding_lookups
  text_and_ragged.py     dedupe_char_ngrams, hoist_elementwise_ops, lean_row_splits
  kernels.py             prefer_eigen_kernels
  per_word.py            combine_once_per_word, precompute_known_words
  empty_branches.py      skip_empty_stitch_parts
  outputs.py             gather_constant_rows

Two modules beyond one per family: contract.py, so that graph.py, the registry and
every family can raise TransformError without importing one another, and specs.py,
so the registry stays what transforms import and the parser what callers import.
constant_folding imports quantize for the names of quantized constants, which
Grappler must not fold back into float ones.
"""

# Imported for their registrations; the order does not matter.
from optimize.transforms import batch_norms  # noqa: F401
from optimize.transforms import constant_folding  # noqa: F401
from optimize.transforms import embedding_lookups  # noqa: F401
from optimize.transforms import empty_branches  # noqa: F401
from optimize.transforms import freeze_and_cleanup  # noqa: F401
from optimize.transforms import kernels  # noqa: F401
from optimize.transforms import outputs  # noqa: F401
from optimize.transforms import per_word  # noqa: F401
from optimize.transforms import quantize  # noqa: F401
from optimize.transforms import text_and_ragged  # noqa: F401
from optimize.transforms import registry
from optimize.transforms.contract import GraphContext
from optimize.transforms.contract import TransformError
from optimize.transforms.registry import names
from optimize.transforms.specs import TransformSpec
from optimize.transforms.specs import parse_transforms

DEFAULT_TRANSFORMS = registry.default_transforms()

__all__ = ["DEFAULT_TRANSFORMS", "GraphContext", "TransformError", "TransformSpec", "names",
           "parse_transforms", "registry"]
