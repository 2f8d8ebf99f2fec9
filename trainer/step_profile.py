"""Where a training run's time goes: the steps themselves, the pauses between them
(checkpoints, evaluations, weight-averaging snapshots, summaries) and, inside a window of
traced steps, the op types the step spends its time in (`optimize.profile`'s op time).

`StepProfileHook` goes first among the training hooks, so what the other hooks do after a
step (a checkpoint save and the evaluation it triggers) falls in the pause before the next
one. `input_batch_seconds` times the input pipeline alone, to compare with the step.
"""

import collections
import dataclasses
import statistics
import time
from typing import Dict, List, Optional

import tensorflow as tf

from optimize import profile

_INPUT_WAIT_OP = "IteratorGetNext"


@dataclasses.dataclass(frozen=True)
class Pause:
  after_step: int
  seconds: float


class StepProfileHook(tf.compat.v1.train.SessionRunHook):
  """Times every step and every pause longer than `pause_secs`; traces the op time of
  `traced_steps` steps from the `trace_from`-th step this session runs (traced steps run
  slower, so they are left out of the step times)."""

  def __init__(self, trace_from: int = 200, traced_steps: int = 20, pause_secs: float = 0.05):
    if trace_from < 1 or traced_steps < 0 or pause_secs <= 0:
      raise ValueError(f"StepProfileHook needs trace_from >= 1, traced_steps >= 0 and "
                       f"pause_secs > 0, got {trace_from}, {traced_steps}, {pause_secs}")
    self._trace_from = trace_from
    self._traced_steps = traced_steps
    self._pause_secs = pause_secs
    self.step_seconds: List[float] = []
    # Process CPU time (all threads) in the untraced steps: over step_seconds, how many
    # cores a step keeps busy.
    self.step_cpu_seconds = 0.0
    self.traced_seconds = 0.0
    self.pauses: List[Pause] = []
    self.op_micros: Dict[str, float] = collections.defaultdict(float)
    self.traced = 0
    self.steps = 0
    self.last_step_ended: Optional[float] = None
    self._types: Dict[str, str] = {}
    self._started = 0.0
    self._started_cpu = 0.0
    self._tracing = False

  def begin(self):
    self._types = profile.op_types(tf.compat.v1.get_default_graph().as_graph_def())

  def before_run(self, run_context):
    self._started = time.perf_counter()
    self._started_cpu = time.process_time()
    if (self.last_step_ended is not None
        and self._started - self.last_step_ended >= self._pause_secs):
      self.pauses.append(Pause(self.steps, self._started - self.last_step_ended))
    self.steps += 1
    self._tracing = self._trace_from <= self.steps < self._trace_from + self._traced_steps
    if self._tracing:
      return tf.compat.v1.train.SessionRunArgs(None, options=tf.compat.v1.RunOptions(
          trace_level=tf.compat.v1.RunOptions.FULL_TRACE))
    return None

  def after_run(self, run_context, run_values):
    self.last_step_ended = time.perf_counter()
    if self._tracing:
      self.traced_seconds += self.last_step_ended - self._started
      if run_values.run_metadata is not None:
        profile.add_op_micros(self.op_micros, run_values.run_metadata, self._types)
        self.traced += 1
    else:
      self.step_seconds.append(self.last_step_ended - self._started)
      self.step_cpu_seconds += time.process_time() - self._started_cpu

  def summary(self, top: int = 10) -> Dict:
    """Step times (median, 90th percentile, sum, the cores busy in them), pauses (the
    longest `top`, total), the traced steps' op time by type (top `top`, with shares) and
    how much of it was the step waiting for its input."""
    traced_op_time = profile.OpProfile(rows=None, runs=max(1, self.traced), micros={
        op: micros / max(1, self.traced) for op, micros in self.op_micros.items()})
    total = traced_op_time.total_micros
    steps = self.step_seconds
    p90 = statistics.quantiles(steps, n=10)[-1] if len(steps) >= 2 else (
        steps[0] if steps else None)
    return {
        "steps": self.steps,
        "step_ms": {"median": _ms(statistics.median(steps)) if steps else None,
                    "p90": _ms(p90) if p90 is not None else None,
                    "seconds_in_steps": round(sum(steps), 2),
                    # Near the machine's core count: a step gains only from less work.
                    "cores_busy": (round(self.step_cpu_seconds / sum(steps), 2) if steps
                                   else None)},
        "pauses": {"count": len(self.pauses),
                   "seconds": round(sum(p.seconds for p in self.pauses), 2),
                   "longest": [{"after_step": p.after_step, "seconds": round(p.seconds, 3)}
                               for p in sorted(self.pauses, key=lambda p: -p.seconds)[:top]]},
        "traced_steps": self.traced,
        "seconds_in_traced_steps": round(self.traced_seconds, 2),
        "op_micros_per_step": round(total, 1),
        "input_wait_share": round(traced_op_time.micros.get(_INPUT_WAIT_OP, 0.0)
                                  / (total or 1.0), 4),
        "top_ops": traced_op_time.top(top),
    }


def input_batch_seconds(input_fn, batches: int = 200, warmup: int = 20) -> float:
  """Mean seconds per batch of an estimator `input_fn`'s dataset read alone, in its own
  graph and session: what the input pipeline costs when no step competes with it."""
  with tf.Graph().as_default():
    # Initializable, as the estimator's: the input may look up tokens in tables.
    iterator = tf.compat.v1.data.make_initializable_iterator(input_fn())
    next_batch = iterator.get_next()
    with tf.compat.v1.Session() as session:
      session.run([tf.compat.v1.tables_initializer(), iterator.initializer])
      for _ in range(warmup):
        session.run(next_batch)
      started = time.perf_counter()
      for _ in range(batches):
        session.run(next_batch)
      return (time.perf_counter() - started) / batches


def _ms(seconds: float) -> float:
  return round(seconds * 1000, 2)
