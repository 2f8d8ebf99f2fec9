"""The accuracy-aware fallback: the smallest plan that passes, 4-bit OOV rows first relaxed."""

from optimize import fallback
from optimize import guard
from optimize import transforms
from optimize.transforms import embedding_lookups

from .transforms import graphs


def verdict(passes: bool) -> guard.GuardResult:
  disagreements = 0 if passes else 100
  return guard.GuardResult([guard.SignatureAgreement(
      "serving_default", guard.Tally(2000, disagreements), guard.Tally(0, 0), 0,
      {"scores": guard.OutputAgreement(1.0 - disagreements / 2000)})])


def test_when_4_bit_oov_rows_fail_the_first_plan_tried_is_int8_throughout():
  protected = graphs.context("tokens", "splits", "y", "init_tables")
  lean = embedding_lookups.lean_embedding_lookups(graphs.vocabulary_embedding_model([0, 1, 2]),
                                                  protected)
  spec = transforms.TransformSpec("quantize_weights", (("dtype", "int8"), ("min_elements", "16"),
                                                       ("oov_rows", "int4")))
  judged = []

  def judge(graph_def, label):
    packed = any(n.name.endswith("/oov/int4") for n in graph_def.node)
    judged.append((label, packed))
    return verdict(not packed)

  plan = fallback.find_plan(lean, protected, spec, [], judge)
  assert plan is not None and plan.trials == 1 and plan.kept == []
  assert judged == [("quantize_weights fallback, plan 1", False)]
  assert "oov_rows=int8" in plan.spec_label
  assert any(n.name.endswith("/int8") for n in plan.graph_def.node)
