"""Settings declared once: a dataclass field carries its default, help text and choices, and
the absl flags of a command are derived from the fields (nested dataclasses flattened), so a
setting is never written again as a flag, nor its choices as a second list.

    @dataclasses.dataclass(frozen=True)
    class ModelConfig:
      dropout: float = setting(0.5, "Dropout rate of the hidden layers (0 = none).")
      optimizer: str = setting("Adam", "Optimizer of the dense layers.", choices=OPTIMIZERS)

`define_flags(TrainerConfig)` defines --dropout and --optimizer (an enum of OPTIMIZERS);
`from_flags(TrainerConfig)` builds the typed config back from the parsed flags, and the
dataclass's own validation runs once, there. `choice_problems(config)` is that validation's
check of every field with choices.
"""

import dataclasses
import typing
from typing import Any, Dict, List, Optional, Sequence

from absl import flags

_KEY = "setting"


@dataclasses.dataclass(frozen=True)
class _Meta:
  help: str
  choices: Optional[Sequence[str]]
  flag: Optional[str]  # the flag's name when it differs from the field's
  aliases: Sequence[str]
  command_line: bool


def setting(default: Any = dataclasses.MISSING, help: str = "", *,  # noqa: A002
            choices: Optional[Sequence[str]] = None, flag: Optional[str] = None,
            aliases: Sequence[str] = (), command_line: bool = True,
            default_factory: Any = dataclasses.MISSING):
  """A dataclass field that is also a command-line flag (unless `command_line=False`)."""
  metadata = {_KEY: _Meta(help, tuple(choices) if choices else None, flag, tuple(aliases),
                          command_line)}
  if default_factory is not dataclasses.MISSING:
    return dataclasses.field(default_factory=default_factory, metadata=metadata)
  return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class _Flag:
  name: str
  field: dataclasses.Field
  kind: type  # str, int, float, bool or tuple (of ints)
  optional: bool
  meta: _Meta
  default: Any


def _unwrap(annotation):
  """(base type, whether None is allowed) of a field annotation."""
  if typing.get_origin(annotation) is typing.Union:
    members = [a for a in typing.get_args(annotation) if a is not type(None)]
    return members[0], True
  return annotation, False


def _flags(config_type) -> List[_Flag]:
  """Every command-line setting of `config_type`, nested dataclasses flattened, in order."""
  hints = typing.get_type_hints(config_type)
  defaults = config_type()
  found = []
  for field in dataclasses.fields(config_type):
    annotation, optional = _unwrap(hints[field.name])
    if dataclasses.is_dataclass(annotation):
      found.extend(_flags(annotation))
      continue
    meta = field.metadata.get(_KEY)
    if meta is None or not meta.command_line:
      continue
    kind = tuple if typing.get_origin(annotation) is tuple else annotation
    found.append(_Flag(meta.flag or field.name, field, kind, optional, meta,
                       getattr(defaults, field.name)))
  return found


def flag_names(config_type) -> List[str]:
  return [f.name for f in _flags(config_type)]


def define_flags(config_type, flag_values: flags.FlagValues = flags.FLAGS,
                 module_name: Optional[str] = None) -> None:
  """Defines one flag per setting of `config_type` (see the module docstring).

  `module_name` is the module the flags belong to in --help (absl lists only the main
  module's flags there); by default the caller's.
  """
  into = {"flag_values": flag_values}
  if module_name:
    into["module_name"] = module_name
  for spec in _flags(config_type):
    name, meta, default = spec.name, spec.meta, spec.default
    if meta.choices:
      flags.DEFINE_enum(name, default, meta.choices, meta.help, **into)
    elif spec.kind is bool:
      flags.DEFINE_bool(name, default, meta.help, **into)
    elif spec.kind is int:
      flags.DEFINE_integer(name, default, meta.help, **into)
    elif spec.kind is float:
      flags.DEFINE_float(name, default, meta.help, **into)
    elif spec.kind is tuple:
      flags.DEFINE_list(name, [str(v) for v in default], meta.help, **into)
    elif spec.kind is str:
      flags.DEFINE_string(name, default, meta.help, **into)
    else:
      raise TypeError(f"setting {name}: no flag type for {spec.kind}")
    for alias in meta.aliases:
      flags.DEFINE_alias(alias, name, flag_values=flag_values)


def from_flags(config_type, flag_values: flags.FlagValues = flags.FLAGS, **fixed):
  """The typed config from the parsed flags (nested dataclasses too); `fixed` values win.

  Raises ValueError naming the flag whose value cannot be converted, and whatever the
  dataclasses' own validation raises.
  """
  values: Dict[str, Any] = {}
  for spec in _flags(config_type):
    value = flag_values[spec.name].value
    if spec.kind is tuple:
      try:
        value = tuple(int(v) for v in value if str(v).strip())
      except ValueError as e:
        raise ValueError(f"--{spec.name} takes comma-separated integers: {e}") from None
    elif spec.optional and value in ("", None):
      value = None
    values[spec.field.name] = value
  return _build(config_type, {**values, **fixed})


def _build(config_type, values: Dict[str, Any]):
  hints = typing.get_type_hints(config_type)
  arguments = {}
  for field in dataclasses.fields(config_type):
    annotation, _ = _unwrap(hints[field.name])
    if dataclasses.is_dataclass(annotation):
      arguments[field.name] = _build(annotation, values)
    elif field.name in values:
      arguments[field.name] = values[field.name]
  return config_type(**arguments)


def choice_problems(config) -> List[str]:
  """A message for each field of `config` whose value is not among its declared choices."""
  problems = []
  for field in dataclasses.fields(config):
    meta = field.metadata.get(_KEY)
    value = getattr(config, field.name)
    if meta is not None and meta.choices and value not in meta.choices:
      problems.append(f"{field.name} must be one of {list(meta.choices)}, got {value!r}")
  return problems
