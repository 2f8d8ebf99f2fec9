"""The eval report: accuracy, macro-F1, per-intent precision/recall and confusion pairs, and
how far the model's confidence can be trusted: the expected calibration error over equal-width
confidence bins (Guo et al., 2017, use 15), with a reliability diagram and the confidence
histograms of right and wrong answers as a PNG."""

import collections
import io
import json
from typing import Dict, List, Optional, Sequence

from export import artifact_io


CALIBRATION_BINS = 15


def calibration(confidences: Sequence[float], correct: Sequence[bool],
                bins: int = CALIBRATION_BINS) -> Dict:
  """Expected calibration error: the gap between confidence and accuracy in each bin of the
  top-class confidence, weighted by the bin's share of the examples; and the bins."""
  if len(confidences) != len(correct) or not confidences:
    raise ValueError(f"need equal, non-zero numbers of confidences and outcomes, "
                     f"got {len(confidences)} and {len(correct)}")
  table = [{"low": b / bins, "high": (b + 1) / bins, "count": 0, "correct": 0,
            "confidence_sum": 0.0} for b in range(bins)]
  for confidence, right in zip(confidences, correct):
    if not 0.0 <= confidence <= 1.0:
      raise ValueError(f"a confidence must be in [0, 1], got {confidence}")
    entry = table[min(int(confidence * bins), bins - 1)]
    entry["count"] += 1
    entry["correct"] += bool(right)
    entry["confidence_sum"] += confidence
  error = 0.0
  for entry in table:
    count = entry["count"]
    entry["accuracy"] = entry["correct"] / count if count else None
    entry["confidence"] = entry.pop("confidence_sum") / count if count else None
    entry["wrong"] = count - entry["correct"]
    if count:
      error += count / len(confidences) * abs(entry["accuracy"] - entry["confidence"])
  return {"expected_calibration_error": error, "bins": table}


def classification_report(labels: Sequence[str], predictions: Sequence[str],
                          top_confusions: int = 10,
                          confidences: Optional[Sequence[float]] = None) -> Dict:
  if len(labels) != len(predictions) or not labels:
    raise ValueError(f"need equal, non-zero numbers of labels and predictions, "
                     f"got {len(labels)} and {len(predictions)}")
  intents = sorted(set(labels) | set(predictions))
  pairs = collections.Counter(zip(labels, predictions))
  per_intent = {}
  for intent in intents:
    true_positives = pairs[(intent, intent)]
    predicted = sum(c for (_, p), c in pairs.items() if p == intent)
    actual = sum(c for (l, _), c in pairs.items() if l == intent)
    precision = true_positives / predicted if predicted else 0.0
    recall = true_positives / actual if actual else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_intent[intent] = {"precision": precision, "recall": recall, "f1": f1,
                          "support": actual}
  labelled = [i for i in intents if per_intent[i]["support"]]
  confusions = sorted(((c, l, p) for (l, p), c in pairs.items() if l != p),
                      key=lambda x: (-x[0], x[1], x[2]))[:top_confusions]
  report = {
      "examples": len(labels),
      "accuracy": sum(pairs[(i, i)] for i in intents) / len(labels),
      "macro_f1": sum(per_intent[i]["f1"] for i in labelled) / len(labelled),
      # Mean per-intent recall: the accuracy expected where every intent is equally common.
      "balanced_accuracy": sum(per_intent[i]["recall"] for i in labelled) / len(labelled),
      "per_intent": per_intent,
      "confusion_pairs": [{"label": l, "predicted": p, "count": c} for c, l, p in confusions],
  }
  if confidences is not None:
    report["calibration"] = calibration(confidences,
                                        [l == p for l, p in zip(labels, predictions)])
  return report


def write_calibration_chart(path: str, figures: Dict) -> None:
  """The reliability diagram (accuracy against confidence per bin) beside the confidence
  histograms of right and wrong answers, as a PNG."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  table = figures["bins"]
  centers = [(b["low"] + b["high"]) / 2 for b in table]
  width = table[0]["high"] - table[0]["low"]
  figure, (reliability, histogram) = plt.subplots(1, 2, figsize=(10, 4.5))
  reliability.bar(centers, [b["accuracy"] or 0.0 for b in table], width=width * 0.9,
                  color="#2a7ab9", label="accuracy")
  reliability.plot([0, 1], [0, 1], "--", color="#888888", label="perfect calibration")
  reliability.set_xlabel("confidence (top-class probability)")
  reliability.set_ylabel("accuracy")
  reliability.set_title(f"reliability (ECE {figures['expected_calibration_error']:.4f})")
  reliability.legend(loc="upper left")
  histogram.bar(centers, [b["correct"] for b in table], width=width * 0.9, color="#2a7ab9",
                label="right")
  histogram.bar(centers, [b["wrong"] for b in table], width=width * 0.9, color="#d9534f",
                bottom=[b["correct"] for b in table], label="wrong")
  histogram.set_xlabel("confidence")
  histogram.set_ylabel("answers")
  histogram.set_title("confidence of right and wrong answers")
  histogram.legend(loc="upper left")
  figure.tight_layout()
  png = io.BytesIO()
  figure.savefig(png, format="png", dpi=90)
  plt.close(figure)
  artifact_io.write_atomic(path, png.getvalue())


def write_report(path: str, report: Dict) -> None:
  artifact_io.write_atomic(path, json.dumps(report, indent=2, sort_keys=True) + "\n")


def summary_lines(report: Dict, worst: int = 5) -> List[str]:
  lines = [f"eval examples: {report['examples']}  accuracy: {report['accuracy']:.4f}  "
           f"balanced accuracy: {report['balanced_accuracy']:.4f}  "
           f"macro-F1: {report['macro_f1']:.4f}"]
  if "calibration" in report:
    lines[0] += f"  ECE: {report['calibration']['expected_calibration_error']:.4f}"
  if report.get("out_of_scope"):
    lines.append(out_of_scope_line(report["out_of_scope"]))
  weakest = sorted(report["per_intent"].items(), key=lambda kv: (kv[1]["f1"], kv[0]))[:worst]
  lines.append("weakest intents: " + ", ".join(
      f"{name} (P {m['precision']:.2f} R {m['recall']:.2f})" for name, m in weakest))
  if report["confusion_pairs"]:
    lines.append("most confused: " + ", ".join(
        f"{c['label']} -> {c['predicted']} x{c['count']}" for c in report["confusion_pairs"][:5]))
  return lines


def out_of_scope_line(oos: Dict) -> str:
  """The out-of-scope figures of a report (`out_of_scope_threshold`'s, with the label)."""
  recall = ("n/a (no out-of-scope eval examples)" if oos["out_of_scope_recall"] is None
            else f"{oos['out_of_scope_recall']:.4f}")
  return (f"out-of-scope ({oos['label']}): threshold {oos['threshold']:.4f} for in-scope "
          f"precision {oos['target_precision']}{'' if oos['target_met'] else ' (NOT MET)'}; "
          f"in-scope accuracy {oos['in_scope_accuracy']:.4f}, out-of-scope recall {recall} "
          f"({oos['out_of_scope_examples']} out-of-scope eval examples)")


def out_of_scope_threshold(in_scope_correct: Sequence[bool], in_scope_scores: Sequence[float],
                           out_of_scope_scores: Sequence[float], target_precision: float) -> Dict:
  """CLINC150's oos-threshold protocol (Larson et al., 2019): an answer whose top score is
  below the threshold becomes "out of scope". Picks the lowest threshold at which the answers
  still given (score >= threshold) are right at least `target_precision` of the time, an
  out-of-scope text answered with an intent counting as wrong; where no threshold gets there,
  the most precise one, with `target_met` false. Reports in-scope accuracy (a rejected
  in-scope text counts as wrong) and out-of-scope recall at that threshold."""
  if len(in_scope_correct) != len(in_scope_scores) or not in_scope_scores:
    raise ValueError(f"need equal, non-zero numbers of in-scope outcomes and scores, "
                     f"got {len(in_scope_correct)} and {len(in_scope_scores)}")
  answers = sorted([(s, bool(c)) for s, c in zip(in_scope_scores, in_scope_correct)]
                   + [(s, False) for s in out_of_scope_scores], key=lambda a: -a[0])
  best = None  # (precision, -threshold) of the most precise threshold
  chosen = None
  kept = right = 0
  for index, (score, is_right) in enumerate(answers):
    kept += 1
    right += is_right
    if index + 1 < len(answers) and answers[index + 1][0] == score:
      continue  # a threshold keeps every answer of its score
    precision = right / kept
    if precision >= target_precision:
      chosen = score
    if best is None or (precision, -score) >= best:
      best = (precision, -score)
  target_met = chosen is not None
  threshold = float(chosen if target_met else -best[1])
  right_answers = sum(bool(c) for s, c in zip(in_scope_scores, in_scope_correct)
                      if s >= threshold)
  given = sum(s >= threshold for s, _ in answers)
  return {
      "threshold": threshold,
      "target_precision": target_precision,
      "target_met": target_met,
      "in_scope_precision": right_answers / given,  # the threshold keeps its own answer
      "in_scope_accuracy": right_answers / len(in_scope_scores),
      "out_of_scope_recall": (sum(s < threshold for s in out_of_scope_scores)
                              / len(out_of_scope_scores)) if out_of_scope_scores else None,
      "in_scope_examples": len(in_scope_scores),
      "out_of_scope_examples": len(out_of_scope_scores),
  }
