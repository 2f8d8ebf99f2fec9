"""The promise every transform makes: the GraphDef it is given stays byte for byte
what it was, however the transform rewrites its own copy."""

import pytest

from optimize.transforms import TransformSpec
from optimize.transforms import registry

from . import graphs


def serialized(graph_def):
  return graph_def.SerializeToString(deterministic=True)


# Transforms that read attrs an export may leave out to their defaults, so they run only
# after a Grappler pass has spelled them out again (fold_constants in the default list).
NEED_DEFAULT_ATTRS = {"dedupe_char_ngrams"}


def exported(name):
  return pytest.param(name, "exported", marks=pytest.mark.xfail(
      strict=True, raises=TypeError, reason=f"{name} needs default attrs spelled out")
      if name in NEED_DEFAULT_ATTRS else ())


@pytest.mark.parametrize("name, stored_as", [(name, "built") for name in registry.names()]
                         + [exported(name) for name in registry.names()])
def test_no_transform_mutates_its_input(name, stored_as):
  assert name in graphs.EXAMPLES, f"graphs.EXAMPLES needs a graph that {name} rewrites"
  graph_def, context, arguments = graphs.EXAMPLES[name]()
  # Exports leave default attrs out; TensorFlow's import adds them to what it is given.
  if stored_as == "exported":
    graph_def = graphs.without_default_attrs(graph_def)
  before = serialized(graph_def)
  spec = TransformSpec(name, tuple((key, str(value)) for key, value in arguments.items()))
  result = spec.apply(graph_def, context)
  assert serialized(result) != before, f"the example graph for {name} is not rewritten"
  assert serialized(graph_def) == before


def test_every_example_names_a_registered_transform():
  assert set(graphs.EXAMPLES) <= set(registry.names())
