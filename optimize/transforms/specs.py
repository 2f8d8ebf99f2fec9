"""Transform specs as the Graph Transform Tool writes them: 'freeze remove_nodes(op=Identity)'."""

import dataclasses
import re
from typing import Any, List, Sequence, Tuple, Union

from tensorflow.core.framework import graph_pb2

from optimize.transforms import registry
from optimize.transforms.contract import GraphContext
from optimize.transforms.contract import TransformError
from optimize.transforms.graph import with_default_attrs

_SPEC = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)(?:\(([^)]*)\))?\s*")


@dataclasses.dataclass(frozen=True)
class TransformSpec:
  """One transform with its `key=value` texts as written; they are checked against
  the transform's declared parameters when the spec is made."""

  name: str
  params: Tuple[Tuple[str, str], ...] = ()
  arguments: Tuple[Tuple[str, Any], ...] = dataclasses.field(init=False, repr=False,
                                                             compare=False)

  def __post_init__(self):
    object.__setattr__(self, "arguments", registry.get(self.name).parse_arguments(self.params))

  @property
  def label(self) -> str:
    if not self.params:
      return self.name
    return f"{self.name}({','.join(f'{k}={v}' for k, v in self.params)})"

  def apply(self, graph_def: graph_pb2.GraphDef, context: GraphContext) -> graph_pb2.GraphDef:
    """The transform run on a copy whose nodes spell out every defaulted attr: exports strip
    them (estimators export with strip_default_attrs), and each transform may then read any
    attr as TensorFlow's importer would see it."""
    return registry.get(self.name).function(with_default_attrs(graph_def), context,
                                            **dict(self.arguments))


def parse_transforms(text: Union[str, Sequence[str]]) -> List[TransformSpec]:
  """Parses GTT-style specs: 'freeze remove_nodes(op=Identity) quantize_weights(dtype=int8)'.

  Accepts one string (space or comma separated outside parentheses) or a list of them.
  """
  if not isinstance(text, str):
    text = " ".join(text)
  specs, position = [], 0
  while position < len(text):
    if text[position] in ", \t\n":
      position += 1
      continue
    match = _SPEC.match(text, position)
    if not match or match.end() == position:
      raise TransformError(f"cannot parse transforms at {text[position:]!r}")
    name, arguments = match.group(1), match.group(2)
    registry.get(name)  # An unknown name fails before its arguments are read.
    params = []
    for argument in filter(None, (a.strip() for a in (arguments or "").split(","))):
      if "=" not in argument:
        raise TransformError(f"{name}: argument {argument!r} is not key=value")
      key, value = (p.strip() for p in argument.split("=", 1))
      params.append((key, value))
    specs.append(TransformSpec(name, tuple(params)))
    position = match.end()
  if not specs:
    raise TransformError("no transforms given")
  return specs
