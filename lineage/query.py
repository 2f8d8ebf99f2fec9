"""The chain behind a served or exported model: data -> train -> export -> optimize -> verdict
-> push, read back from the store as a dict (`describe_chain`), a table or JSON (`report`).

The walk follows events by artifact type, not by the event keys a stage chose: from the
pushed (or newest exported) model to the execution that produced it, to that execution's
inputs, and so on back to the data; verdicts and, for a model not pushed, the optimization
are found downstream, newest first.
"""

import datetime
import json
import textwrap
from typing import Any, Dict, List, Optional

from ml_metadata.proto import metadata_store_pb2

from lineage import record
from lineage import schema
from lineage.store import LineageStore

Artifact = metadata_store_pb2.Artifact
Execution = metadata_store_pb2.Execution
Event = metadata_store_pb2.Event

STEPS = ("data", "train", "export", "optimize", "verdict", "push")


# ------------------------------------------------------------------------------------- graph


def newest(items):
  """Newest first, by creation time then id."""
  return sorted(items, key=lambda x: (x.create_time_since_epoch, x.id), reverse=True)


def producer(store: LineageStore, artifact: Artifact) -> Optional[Execution]:
  """The execution that output `artifact`, if any."""
  ids = [e.execution_id for e in store.mlmd.get_events_by_artifact_ids([artifact.id])
         if e.type == Event.OUTPUT]
  executions = store.mlmd.get_executions_by_id(ids) if ids else []
  return newest(executions)[0] if executions else None


def consumers(store: LineageStore, artifact: Artifact, type_name: str) -> List[Execution]:
  """Executions of `type_name` that took `artifact` as an input, newest first."""
  ids = [e.execution_id for e in store.mlmd.get_events_by_artifact_ids([artifact.id])
         if e.type == Event.INPUT]
  type_id = store.type_id(type_name)
  return newest(e for e in (store.mlmd.get_executions_by_id(ids) if ids else [])
                 if e.type_id == type_id)


def linked(store: LineageStore, execution: Execution, event_type,
           type_name: str) -> List[Artifact]:
  """The `type_name` artifacts `execution` took in (INPUT) or put out (OUTPUT)."""
  ids = [e.artifact_id for e in store.mlmd.get_events_by_execution_ids([execution.id])
         if e.type == event_type]
  type_id = store.type_id(type_name)
  artifacts = store.mlmd.get_artifacts_by_id(ids) if ids else []
  order = {artifact_id: n for n, artifact_id in enumerate(ids)}
  return sorted((a for a in artifacts if a.type_id == type_id), key=lambda a: order[a.id])


def _first(items):
  return items[0] if items else None


def servable_at(store: LineageStore, version_dir: str,
                model_name: Optional[str] = None) -> Artifact:
  """The servable stored for `version_dir` (exported or optimized, newest first), else a new
  ExportedModel record of it: a stage run alone on a model links to its recorded lineage."""
  version_dir = version_dir.rstrip("/")
  known = newest(a for a in store.mlmd.get_artifacts_by_uri(version_dir)
                 if store.type_name(a.type_id) in schema.SERVABLES)
  return known[0] if known else schema.exported_model(version_dir, model_name)


# ------------------------------------------------------------------------------------- chain


def _time(milliseconds: int) -> str:
  return datetime.datetime.fromtimestamp(milliseconds / 1000, datetime.timezone.utc).isoformat(
      timespec="seconds")


def artifact_info(store: LineageStore, artifact: Optional[Artifact]) -> Optional[Dict]:
  if artifact is None:
    return None
  name = store.type_name(artifact.type_id)
  return {"id": artifact.id, "type": name, "uri": artifact.uri,
          "created": _time(artifact.create_time_since_epoch),
          "properties": schema.get_properties(artifact, schema.ARTIFACT_TYPES.get(name, {}))}


def execution_info(store: LineageStore, execution: Optional[Execution]) -> Optional[Dict]:
  if execution is None:
    return None
  name = store.type_name(execution.type_id)
  runs = [c.name for c in store.mlmd.get_contexts_by_execution(execution.id)
          if c.type_id == store.type_id(schema.PIPELINE_RUN)]
  return {"id": execution.id, "type": name, "state": Execution.State.Name(
      execution.last_known_state), "created": _time(execution.create_time_since_epoch),
          "pipeline_run": _first(runs),
          "properties": schema.get_properties(execution, schema.EXECUTION_TYPES.get(name, {}))}


def _step(store, execution, artifact) -> Optional[Dict]:
  if execution is None and artifact is None:
    return None
  return {"execution": execution_info(store, execution), "artifact": artifact_info(store, artifact)}


def _in_scope(store: LineageStore, job_dir: Optional[str], type_name: str) -> List[Artifact]:
  if job_dir is None:
    return list(store.mlmd.get_artifacts_by_type(type_name))
  name = record.experiment_name(job_dir)
  context = store.mlmd.get_context_by_type_and_name(schema.EXPERIMENT, name)
  if context is None:
    raise LookupError(f"no lineage recorded for job dir {name} in {store.describe()}")
  type_id = store.type_id(type_name)
  return [a for a in store.mlmd.get_artifacts_by_context(context.id) if a.type_id == type_id]


def _version(artifact: Artifact) -> Optional[int]:
  return artifact.properties["version"].int_value if "version" in artifact.properties else None


def find_model(store: LineageStore, job_dir: Optional[str] = None,
               model_version: Optional[int] = None) -> Artifact:
  """The newest pushed model, else the newest exported one; with `model_version`, the one
  pushed as that version, else a servable exported or optimized as that version.

  `job_dir` limits the search to that experiment; None searches the whole store.
  """
  pushed = newest(_in_scope(store, job_dir, schema.PUSHED_MODEL))
  exported = newest(_in_scope(store, job_dir, schema.EXPORTED_MODEL))
  scope = f"job dir {job_dir}" if job_dir else "the store"
  if model_version is None:
    if pushed or exported:
      return (pushed or exported)[0]
    raise LookupError(f"no pushed or exported model recorded for {scope} in {store.describe()}")
  servables = newest(exported + _in_scope(store, job_dir, schema.OPTIMIZED_MODEL))
  for candidates in (pushed, servables):
    for artifact in candidates:
      if _version(artifact) == model_version:
        return artifact
  known = sorted({_version(a) for a in pushed + servables} - {None})
  raise LookupError(f"no model with version {model_version} recorded for {scope} in "
                    f"{store.describe()}; recorded versions: {known or 'none'}")


def describe_chain(store: LineageStore, job_dir: Optional[str] = None,
                   model_version: Optional[int] = None) -> Dict[str, Any]:
  """The chain as a dict: `target`, then one entry per step of `STEPS` (None if absent)."""
  target = find_model(store, job_dir, model_version)
  target_type = store.type_name(target.type_id)
  chain: Dict[str, Any] = {"store": store.describe(), "job_dir": job_dir,
                           "target": artifact_info(store, target)}
  push_execution, served = None, target
  if target_type == schema.PUSHED_MODEL:
    push_execution = producer(store, target)
    served = push_execution and _first(
        linked(store, push_execution, Event.INPUT, schema.EXPORTED_MODEL)
        + linked(store, push_execution, Event.INPUT, schema.OPTIMIZED_MODEL))
  chain["push"] = _step(store, push_execution, target if push_execution else None)

  exported, optimize_execution, optimized = None, None, None
  if served is not None and store.type_name(served.type_id) == schema.OPTIMIZED_MODEL:
    optimized, optimize_execution = served, producer(store, served)
    exported = optimize_execution and _first(
        linked(store, optimize_execution, Event.INPUT, schema.EXPORTED_MODEL))
  elif served is not None:
    exported = served
    if push_execution is None:  # not pushed: show how far it got after the export
      optimize_execution = _first(consumers(store, exported, schema.OPTIMIZE))
      optimized = optimize_execution and _first(
          linked(store, optimize_execution, Event.OUTPUT, schema.OPTIMIZED_MODEL))
  chain["optimize"] = _step(store, optimize_execution, optimized)

  export_execution = exported and producer(store, exported)
  chain["export"] = _step(store, export_execution, exported)

  trained = export_execution and _first(linked(store, export_execution, Event.INPUT, schema.MODEL))
  train_execution = trained and producer(store, trained)
  chain["train"] = _step(store, train_execution, trained)
  if chain["train"] is not None and train_execution is not None:
    modules = (linked(store, train_execution, Event.INPUT, schema.HUB_MODULE)
               + linked(store, train_execution, Event.OUTPUT, schema.HUB_MODULE))
    chain["train"]["hub_module"] = artifact_info(store, _first(modules))
  chain["data"] = [artifact_info(store, a) for a in (
      linked(store, train_execution, Event.INPUT, schema.DATASET) if train_execution else [])]

  verified = served if push_execution else (optimized or exported)
  smoke_execution = verified and _first(consumers(store, verified, schema.SMOKE_TEST))
  chain["verdict"] = _step(store, smoke_execution, smoke_execution and _first(
      linked(store, smoke_execution, Event.OUTPUT, schema.VERDICT)))
  return chain


# ------------------------------------------------------------------------------------- table


def _value(value) -> str:
  if isinstance(value, (dict, list)):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
  if isinstance(value, float):
    return f"{value:.6g}"
  if value == "":
    return '""'
  return str(value)


def _size(size_bytes: Optional[int]) -> str:
  if size_bytes is None:
    return "?"
  for unit in ("B", "KB", "MB"):
    if size_bytes < 1000:
      return f"{size_bytes:.0f} {unit}"
    size_bytes /= 1000
  return f"{size_bytes:.1f} GB"


def _summary(step: str, execution: Optional[Dict], artifact: Optional[Dict]) -> str:
  """The one figure a reader looks for first in each step."""
  if execution and execution["state"] != "COMPLETE":
    reason = execution["properties"].get(schema.FAILURE_REASON, "")
    return f"{execution['state']}: {reason}"[:80] if reason else execution["state"]
  run = execution["properties"] if execution else {}
  made = artifact["properties"] if artifact else {}
  if step.startswith("data"):
    return f"{made.get('row_count', '?')} rows, {made.get('label_count', '?')} labels"
  if step == "train":
    return " ".join(f"{label}={_value(run[k])}" for k, label in (
        ("accuracy", "accuracy"), ("macro_f1", "macro_f1"),
        ("expected_calibration_error", "ECE"), ("oos_threshold", "oos_threshold"),
        ("oos_recall", "oos_recall"), ("in_scope_accuracy", "in_scope_accuracy")) if k in run)
  if step in ("export", "optimize") and artifact:
    before = run.get("size_bytes_before")
    sizes = (f"{_size(before)} -> {_size(made.get('size_bytes'))}" if before
             else _size(made.get("size_bytes")))
    agreement = f", agreement {_value(run['agreement'])}" if "agreement" in run else ""
    if "guard_examples" in run:
      agreement += f" on {run['guard_examples']}"
      if "guard_real_examples" in run:
        agreement += (f" ({run['guard_real_examples']} real, "
                      f"{run.get('guard_synthetic_examples', 0)} synthetic)")
    for metric in ("accuracy", "mean_absolute_error"):
      if f"{metric}_before" in run:
        agreement += (f", {metric} {_value(run[metric + '_before'])} -> "
                      f"{_value(run[metric + '_after'])}")
    if run.get("kept_in_float"):
      agreement += f", {len(run['kept_in_float'])} weights kept in float"
    return sizes + agreement
  if step == "verdict" and artifact:
    if made.get("blessed"):
      return f"BLESSED ({made.get('backend') or 'backend ?'})"
    return f"NOT BLESSED: {made.get('reason') or 'no reason recorded'}"[:80]
  if step == "push" and artifact:
    return f"version {made.get('version')}"
  return ""


def _headline(chain: Dict) -> str:
  target = chain["target"]
  properties = target["properties"]
  if target["type"] == schema.PUSHED_MODEL:
    what = f"version {properties.get('version')} pushed to {properties.get('base_path')}"
  else:
    what = f"{target['type']} {target['uri']} (not pushed)"
  return f"Lineage of {what}\nstore {chain['store']}" + (
      f"   job dir {chain['job_dir']}" if chain["job_dir"] else "")


def format_table(chain: Dict, width: int = 100) -> str:
  """A table of the steps, then every property of each step."""
  rows, details = [], []

  def add(step: str, entry: Optional[Dict]):
    if entry is None:
      rows.append((step, "-", "-", "-", "(none recorded)", ""))
      return
    execution, artifact = entry.get("execution"), entry.get("artifact")
    rows.append((step,
                 f"{execution['type']} {execution['id']}" if execution else "-",
                 execution["state"] if execution else "-",
                 f"{artifact['type']} {artifact['id']}" if artifact else "-",
                 _summary(step, execution, artifact),
                 artifact["uri"] if artifact else ""))
    for source in (execution, artifact, entry.get("hub_module")):
      if source:
        for key, value in sorted(source["properties"].items()):
          details.append((step, f"{source['type']}.{key}", _value(value)))
    if execution and execution.get("pipeline_run"):
      details.append((step, "run", execution["pipeline_run"]))

  if chain["data"]:
    for dataset in chain["data"]:
      split = dataset["properties"].get("split")
      add(f"data ({split})" if split else "data", {"artifact": dataset})
  else:
    add("data", None)
  for step in STEPS[1:]:
    add(step, chain[step])

  header = ("step", "execution", "state", "artifact", "summary", "uri")
  widths = [max(len(row[i]) for row in rows + [header]) for i in range(len(header) - 1)]
  lines = [_headline(chain), ""]
  for row in [header] + rows:
    lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[-1])
  lines.append("")
  step_width = widths[0]
  key_width = max((len(key) for _, key, _ in details), default=0)
  for step, key, value in details:
    prefix = f"{step:<{step_width}}  {key:<{key_width}}  "
    lines.append(textwrap.fill(value, width=max(width, len(prefix) + 20),
                               initial_indent=prefix, subsequent_indent=" " * len(prefix),
                               break_long_words=False, break_on_hyphens=False))
  return "\n".join(line.rstrip() for line in lines) + "\n"


def report(store: LineageStore, job_dir: Optional[str] = None,
           model_version: Optional[int] = None, as_json: bool = False) -> str:
  chain = describe_chain(store, job_dir, model_version)
  if as_json:
    return json.dumps(chain, indent=2, sort_keys=True) + "\n"
  return format_table(chain)
