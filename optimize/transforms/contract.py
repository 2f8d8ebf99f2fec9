"""What every transform is given and what it raises when it cannot rewrite a graph."""

import dataclasses
from typing import FrozenSet, Mapping

import numpy as np


class TransformError(ValueError):
  """A graph this transform cannot rewrite safely; the message names the node or op."""


@dataclasses.dataclass(frozen=True)
class GraphContext:
  """The nodes whose names the signatures, the loader and the assets refer to, each
  variable's value keyed by its variable node's name, each asset's line count keyed by
  its asset node's name (so a transform knows a vocabulary's size without reading files),
  each asset's path, for a transform that runs the graph's own table initializers, and the
  nodes signatures feed (empty when unknown)."""

  protected: FrozenSet[str]
  variable_values: Mapping[str, np.ndarray] = dataclasses.field(default_factory=dict)
  asset_line_counts: Mapping[str, int] = dataclasses.field(default_factory=dict)
  asset_paths: Mapping[str, str] = dataclasses.field(default_factory=dict)
  fed: FrozenSet[str] = frozenset()
