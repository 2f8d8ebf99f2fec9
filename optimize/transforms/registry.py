"""The transforms by name, each declared beside its function with @register.

A transform is a function `(graph_def, context, **params) -> graph_def`. Like the Graph
Transform Tool's REGISTER_GRAPH_TRANSFORM and its typed GetIntParameter-style getters,
a registration names the transform and declares its parameters; here they are checked
and converted once, when a spec is parsed, so a bad value fails before any graph is
read and an int parameter reaches the function as an int.

Transforms that declare a `default_position` make up the default pipeline, in that
order, so the default list is stated once, beside each transform.
"""

import contextlib
import dataclasses
import inspect
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from optimize.transforms.contract import TransformError

# Types a parameter can have: what a spec's text value is converted to.
_PARAM_TYPES = {str: "a string", int: "an integer"}


@dataclasses.dataclass(frozen=True)
class Param:
  """One keyword parameter of a transform, as a spec may set it: `name=value`."""

  name: str
  type: type
  default: Any
  choices: Tuple[Any, ...] = ()
  minimum: Optional[int] = None

  def __post_init__(self):
    if self.type not in _PARAM_TYPES:
      raise TypeError(f"parameter {self.name}: type must be one of {list(_PARAM_TYPES)}")

  def parse(self, transform: str, text: str) -> Any:
    """The value `text` stands for; a TransformError naming the transform, the
    parameter and the value when it is not one this parameter accepts."""
    problem = f"{transform}: {self.name}={text!r}"
    if self.type is int:
      try:
        value = int(text)
      except ValueError:
        raise TransformError(f"{problem} is not {_PARAM_TYPES[int]}") from None
    else:
      value = text
    if self.choices and value not in self.choices:
      raise TransformError(f"{problem} is not one of {', '.join(map(str, self.choices))}")
    if self.minimum is not None and value < self.minimum:
      raise TransformError(f"{problem} is below the minimum, {self.minimum}")
    return value


@dataclasses.dataclass(frozen=True)
class Transform:
  name: str
  function: Callable
  params: Tuple[Param, ...] = ()
  default_position: Optional[int] = None
  default_args: Tuple[Tuple[str, str], ...] = ()

  @property
  def default_spec(self) -> str:
    """How the default pipeline spells this transform, e.g. 'quantize_weights(dtype=int8)'."""
    if not self.default_args:
      return self.name
    return f"{self.name}({','.join(f'{k}={v}' for k, v in self.default_args)})"

  def parse_arguments(self, pairs: Sequence[Tuple[str, str]]) -> Tuple[Tuple[str, Any], ...]:
    """Typed values for a spec's `key=value` texts; a later repeat of a key wins."""
    by_name = {p.name: p for p in self.params}
    given = dict(pairs)
    unknown = sorted(set(given) - set(by_name))
    if unknown:
      raise TransformError(f"{self.name}: unknown argument(s) {unknown}; "
                           f"accepted: {list(by_name) or 'none'}")
    return tuple((key, by_name[key].parse(self.name, text)) for key, text in given.items())


_TRANSFORMS: Dict[str, Transform] = {}


def register(name: str, params: Sequence[Param] = (), default_position: Optional[int] = None,
             default_args: Optional[Mapping[str, Any]] = None) -> Callable[[Callable], Callable]:
  """Declares the decorated function as transform `name`; returns it unchanged.

  `params` must be the function's keyword parameters after (graph_def, context), with
  the same defaults. `default_position` puts the transform in the default pipeline
  (lower runs earlier), with `default_args` spelled out there.
  """
  def decorate(function: Callable) -> Callable:
    _add(Transform(name, function, tuple(params), default_position,
                   tuple((k, str(v)) for k, v in (default_args or {}).items())))
    return function
  return decorate


@contextlib.contextmanager
def registered(name: str, function: Callable, params: Sequence[Param] = ()) -> Iterator[None]:
  """Registers a transform for the duration of a `with` block, as tests need for a
  deliberately broken transform; never part of the default pipeline."""
  _add(Transform(name, function, tuple(params)))
  try:
    yield
  finally:
    del _TRANSFORMS[name]


def get(name: str) -> Transform:
  if name not in _TRANSFORMS:
    raise TransformError(f"unknown transform {name!r}; known: {', '.join(names())}")
  return _TRANSFORMS[name]


def names() -> List[str]:
  """Every registered transform's name, sorted."""
  return sorted(_TRANSFORMS)


def default_transforms() -> str:
  """The default pipeline as one spec string, in the declared positions' order."""
  chosen = sorted((t for t in _TRANSFORMS.values() if t.default_position is not None),
                  key=lambda t: t.default_position)
  return " ".join(t.default_spec for t in chosen)


def _add(transform: Transform) -> None:
  """Registers `transform` after checking its declaration against its function; a
  mistake there is the programmer's, so it raises at import, not at parse time."""
  if transform.name in _TRANSFORMS:
    raise ValueError(f"transform {transform.name!r} is registered twice")
  keywords = list(inspect.signature(transform.function).parameters.values())[2:]
  declared = [(p.name, p.default) for p in transform.params]
  if [(k.name, k.default) for k in keywords] != declared:
    raise ValueError(f"{transform.name}: declared params {declared} differ from the "
                     f"function's keyword parameters {[(k.name, k.default) for k in keywords]}")
  for param in transform.params:
    if param.parse(transform.name, str(param.default)) != param.default:
      raise ValueError(f"{transform.name}: default {param.name}={param.default!r} is not "
                       f"what {str(param.default)!r} parses to")
  transform.parse_arguments(transform.default_args)
  position = transform.default_position
  if position is not None and any(t.default_position == position
                                  for t in _TRANSFORMS.values()):
    raise ValueError(f"{transform.name}: default position {position} is taken")
  _TRANSFORMS[transform.name] = transform
