"""The promises every transform makes: the GraphDef it is given stays byte for byte what it
was, however the transform rewrites its own copy, and an export that leaves default attrs
out (as estimators export) is rewritten exactly as the graph that spells them out."""

import pytest

from optimize.transforms import TransformSpec
from optimize.transforms import registry

from . import graphs


def serialized(graph_def):
  return graph_def.SerializeToString(deterministic=True)


def _spec(name, arguments):
  return TransformSpec(name, tuple((key, str(value)) for key, value in arguments.items()))


@pytest.mark.parametrize("name", registry.names())
def test_no_transform_mutates_its_input(name):
  assert name in graphs.EXAMPLES, f"graphs.EXAMPLES needs a graph that {name} rewrites"
  built, context, arguments = graphs.EXAMPLES[name]()
  for graph_def in (built, graphs.without_default_attrs(built)):
    before = serialized(graph_def)
    result = _spec(name, arguments).apply(graph_def, context)
    assert serialized(graph_def) == before
  assert serialized(result) != serialized(built), f"the example graph for {name} is not rewritten"


@pytest.mark.parametrize("name", registry.names())
def test_an_export_without_default_attrs_is_rewritten_alike(name):
  built, context, arguments = graphs.EXAMPLES[name]()
  stripped = graphs.without_default_attrs(built)
  spec = _spec(name, arguments)
  assert serialized(spec.apply(stripped, context)) == serialized(spec.apply(built, context))


def test_every_example_names_a_registered_transform():
  assert set(graphs.EXAMPLES) <= set(registry.names())
