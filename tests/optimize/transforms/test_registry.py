"""The registry and the spec parser: names, typed parameters, the default pipeline."""

import pytest

from optimize import transforms
from optimize.transforms import registry
from optimize.transforms.registry import Param

from .graphs import context, unused_branch_model


def test_default_transforms_are_the_pipeline_the_transforms_declare():
  assert transforms.DEFAULT_TRANSFORMS == (
      "freeze strip_unused_nodes remove_asserts remove_nodes(op=Identity) "
      "merge_duplicate_nodes fold_constants fold_batch_norms lean_embedding_lookups "
      "dedupe_char_ngrams hoist_elementwise_ops remove_identity_reshapes lean_row_splits "
      "gather_constant_rows quantize_weights(dtype=int8,oov_rows=int4) combine_once_per_word "
      "precompute_known_words skip_empty_stitch_parts prefer_eigen_kernels")
  assert [s.label for s in transforms.parse_transforms(transforms.DEFAULT_TRANSFORMS)][-3:] == [
      "precompute_known_words", "skip_empty_stitch_parts", "prefer_eigen_kernels"]


def test_names_lists_every_transform():
  assert transforms.names() == [
      "combine_once_per_word", "dedupe_char_ngrams", "fold_batch_norms", "fold_constants",
      "freeze", "gather_constant_rows", "grappler", "hoist_elementwise_ops",
      "lean_embedding_lookups", "lean_row_splits", "merge_duplicate_nodes",
      "precompute_known_words", "prefer_eigen_kernels", "quantize_weights", "remove_asserts",
      "remove_identity_reshapes", "remove_nodes", "skip_empty_stitch_parts",
      "strip_unused_nodes"]


def test_parse_transforms_reads_gtt_style_specs():
  specs = transforms.parse_transforms(
      "freeze, remove_nodes(op=Identity) quantize_weights(dtype=float16, min_elements=10)")
  assert [s.label for s in specs] == [
      "freeze", "remove_nodes(op=Identity)", "quantize_weights(dtype=float16,min_elements=10)"]
  assert [s.label for s in transforms.parse_transforms(["freeze", "fold_constants"])] == [
      "freeze", "fold_constants"]
  with pytest.raises(transforms.TransformError, match="unknown transform 'shrink'"):
    transforms.parse_transforms("freeze shrink")
  with pytest.raises(transforms.TransformError, match="unknown argument"):
    transforms.parse_transforms("quantize_weights(bits=4)")


@pytest.mark.parametrize("text, message", [
    ("", "no transforms given"),
    ("freeze (", r"cannot parse transforms at '\('"),
    ("quantize_weights(int8)", "quantize_weights: argument 'int8' is not key=value"),
    ("freeze(op=Identity)", r"freeze: unknown argument\(s\) \['op'\]; accepted: none"),
    ("quantize_weights(bits=4)",
     r"unknown argument\(s\) \['bits'\]; accepted: "
     r"\['dtype', 'min_elements', 'keep_float16', 'keep_float32', 'embedding_scales', "
     r"'oov_rows'\]"),
])
def test_parse_transforms_names_what_it_cannot_read(text, message):
  with pytest.raises(transforms.TransformError, match=message):
    transforms.parse_transforms(text)


@pytest.mark.parametrize("text, message", [
    ("quantize_weights(min_elements=many)",
     "quantize_weights: min_elements='many' is not an integer"),
    ("quantize_weights(min_elements=0)",
     "quantize_weights: min_elements='0' is below the minimum, 1"),
    ("quantize_weights(dtype=int4)", "quantize_weights: dtype='int4' is not one of int8, float16"),
    ("prefer_eigen_kernels(max_elements=-1)", "max_elements='-1' is below the minimum, 0"),
])
def test_a_bad_parameter_value_fails_at_parse_time_naming_transform_parameter_and_value(
    text, message):
  with pytest.raises(transforms.TransformError, match=message):
    transforms.parse_transforms(text)


def test_parameters_reach_the_function_typed():
  seen = {}

  def probe(graph_def, context, count=3, label="a"):
    seen.update(count=count, label=label)
    return graph_def

  with registry.registered("probe", probe, params=[Param("count", int, 3, minimum=0),
                                                   Param("label", str, "a")]):
    spec, = transforms.parse_transforms("probe(count=7, label=b)")
    spec.apply(unused_branch_model(), context("x", "y"))
  assert seen == {"count": 7, "label": "b"}


def test_a_transform_registered_for_a_test_is_gone_after_it():
  def probe(graph_def, context):
    return graph_def

  with registry.registered("probe", probe):
    assert "probe" in transforms.names()
    assert transforms.parse_transforms("freeze probe")[1].name == "probe"
    assert "probe" not in registry.default_transforms()
  assert "probe" not in transforms.names()
  with pytest.raises(transforms.TransformError, match="unknown transform 'probe'"):
    transforms.parse_transforms("probe")


def test_a_registration_must_declare_what_its_function_accepts():
  def probe(graph_def, context, count=3):
    return graph_def

  with pytest.raises(ValueError, match="differ from the function's keyword parameters"):
    with registry.registered("probe", probe):
      pass
  with pytest.raises(ValueError, match="differ from the function's keyword parameters"):
    with registry.registered("probe", probe, params=[Param("count", int, 4)]):
      pass
  with pytest.raises(ValueError, match="registered twice"):
    with registry.registered("freeze", probe, params=[Param("count", int, 3)]):
      pass
  assert "probe" not in transforms.names()
