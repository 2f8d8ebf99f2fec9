"""The eval report: accuracy, macro-F1, per-intent precision/recall and confusion pairs."""

import collections
import json
from typing import Dict, List, Sequence

from export import artifact_io


def classification_report(labels: Sequence[str], predictions: Sequence[str],
                          top_confusions: int = 10) -> Dict:
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
  return {
      "examples": len(labels),
      "accuracy": sum(pairs[(i, i)] for i in intents) / len(labels),
      "macro_f1": sum(per_intent[i]["f1"] for i in labelled) / len(labelled),
      "per_intent": per_intent,
      "confusion_pairs": [{"label": l, "predicted": p, "count": c} for c, l, p in confusions],
  }


def write_report(path: str, report: Dict) -> None:
  artifact_io.write_atomic(path, json.dumps(report, indent=2, sort_keys=True) + "\n")


def summary_lines(report: Dict, worst: int = 5) -> List[str]:
  lines = [f"eval examples: {report['examples']}  accuracy: {report['accuracy']:.4f}  "
           f"macro-F1: {report['macro_f1']:.4f}"]
  weakest = sorted(report["per_intent"].items(), key=lambda kv: (kv[1]["f1"], kv[0]))[:worst]
  lines.append("weakest intents: " + ", ".join(
      f"{name} (P {m['precision']:.2f} R {m['recall']:.2f})" for name, m in weakest))
  if report["confusion_pairs"]:
    lines.append("most confused: " + ", ".join(
        f"{c['label']} -> {c['predicted']} x{c['count']}" for c in report["confusion_pairs"][:5]))
  return lines
