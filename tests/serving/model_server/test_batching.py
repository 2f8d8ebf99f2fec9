"""Request batching as TF Serving's batching session does it: concurrent requests merged into
fewer session runs, each answer its own rows, the binary's limits and refusals."""

import gc
import threading
import time
import weakref
from concurrent import futures

import grpc
import numpy as np
import pytest
from tensorflow_serving.apis import model_pb2
from tensorflow_serving.config import model_server_config_pb2

from serving.model_server import batching
from serving.model_server import config_files
from serving.model_server import monitoring
from serving.model_server.core import CoreOptions, ServerCore
from serving.model_server.server import ModelServer, ServerOptions
from serving.model_server.status import ServingError
from tests import tiny_models
from tests.serving.model_server import apis
from tests.serving.helpers import rest

LONG_TIMEOUT_MICROS = 30_000_000  # a batch that runs only once full


def params(max_batch_size, batch_timeout_micros=LONG_TIMEOUT_MICROS, **fields):
  message = config_files.BatchingParameters()
  message.max_batch_size.value = max_batch_size
  message.batch_timeout_micros.value = batch_timeout_micros
  for name, value in fields.items():
    if name in ("allowed_batch_sizes",):
      message.allowed_batch_sizes.extend(value)
    elif name == "pad_variable_length_inputs":
      message.pad_variable_length_inputs = value
    else:
      getattr(message, name).value = value
  return message


def spec(signature, name="half_plus_two"):
  return model_pb2.ModelSpec(name=name, signature_name=signature)


def at_once(calls):
  """Runs every call on its own thread at the same time; (results, errors) in call order."""
  with futures.ThreadPoolExecutor(len(calls)) as pool:
    submitted = [pool.submit(call) for call in calls]
    outcomes = []
    for future in submitted:
      try:
        outcomes.append((future.result(timeout=60), None))
      except ServingError as e:
        outcomes.append((None, e))
  return [o[0] for o in outcomes], [o[1] for o in outcomes]


def session_runs(core):
  return core.metrics.value(monitoring.BATCHING_WRAPPED_RUN_COUNT)


def predict_x(core, values, signature="predict_x"):
  _, outputs = apis.predict(core, spec(signature), {"x": np.array(values, np.float32)})
  return outputs["y"].tolist()


# -- through the server's core, on a real model ----------------------------------------------


def test_concurrent_requests_become_one_session_run_each_with_its_own_answer(core_with):
  core = core_with(params(8))
  answers, errors = at_once([lambda i=i: predict_x(core, [[float(i)]]) for i in range(8)])
  assert errors == [None] * 8
  assert answers == [[[0.5 * i + 2]] for i in range(8)]
  assert session_runs(core) == 1
  # Requests of several rows fill the batch by rows: 3 + 3 + 2 = 8, one run.
  answers, _ = at_once([lambda: predict_x(core, [[0.0], [2.0], [4.0]]),
                        lambda: predict_x(core, [[6.0], [8.0], [10.0]]),
                        lambda: predict_x(core, [[12.0], [14.0]])])
  assert answers == [[[2.0], [3.0], [4.0]], [[5.0], [6.0], [7.0]], [[8.0], [9.0]]]
  assert session_runs(core) == 2


@pytest.mark.parametrize("api", ["classify", "regress"])
def test_classify_and_regress_batch_too(core_with, api):
  core = core_with(params(4))
  signature = {"classify": "classify_x_to_y", "regress": "regress_x_to_y"}[api]
  examples = [tiny_models.x_example(float(i)).SerializeToString() for i in range(4)]

  def ask(example):
    _, result = getattr(apis, api)(core, spec(signature), [example])
    return (result.scores if api == "classify" else result.values).reshape(-1).tolist()

  answers, errors = at_once([lambda e=e: ask(e) for e in examples])
  assert errors == [None] * 4 and answers == [[0.5 * i + 2] for i in range(4)]
  assert session_runs(core) == 1


def test_a_request_over_max_batch_size_is_refused_as_the_binary_refuses_it(core_with):
  core = core_with(params(8))
  with pytest.raises(ServingError) as refused:
    predict_x(core, [[1.0]] * 9)
  assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
  assert refused.value.message == "Task size 9 is larger than maximum input batch size 8"
  assert session_runs(core) == 0


def test_padding_to_allowed_batch_sizes_never_reaches_an_answer(core_with):
  core = core_with(params(8, batch_timeout_micros=200_000, allowed_batch_sizes=[4, 8]))
  answers, errors = at_once([lambda: predict_x(core, [[1.0], [3.0]]),
                             lambda: predict_x(core, [[5.0]])])
  assert errors == [None, None]
  assert answers == [[[2.5], [3.5]], [[4.5]]]
  assert session_runs(core) == 1
  text = core.metrics.prometheus_text()
  # One run of 4 rows (3 asked, 1 padding).
  assert (":tensorflow:serving:batching_session:processed_batch_size_sum{} 4" in text)
  assert ':tensorflow:serving:batching_session:padding_size_sum{execution_batch_size="4"} 1' \
      in text


def test_a_failing_merged_batch_fails_each_request_and_the_bad_one_fails_alone(core_with):
  batched = core_with(params(4))
  unbatched = core_with(None, name="half_plus_two_unbatched")
  good = [tiny_models.x_example(float(i)).SerializeToString() for i in range(3)]
  requests = good + [b"not a tf.Example"]

  def ask(core, example, name):
    _, result = apis.regress(core, spec("regress_x_to_y", name), [example])
    return result.values.tolist()

  _, errors = at_once([lambda e=e: ask(batched, e, "half_plus_two") for e in requests])
  assert all(e is not None and e.code == grpc.StatusCode.INVALID_ARGUMENT for e in errors)
  assert len({e.message for e in errors}) == 1 and "Could not parse example input" in \
      errors[0].message
  # Retried unbatched, only the bad request fails, with the same error.
  alone = [ask(unbatched, e, "half_plus_two_unbatched") for e in good]
  assert alone == [[2.0], [2.5], [3.0]]
  with pytest.raises(ServingError) as bad:
    ask(unbatched, requests[-1], "half_plus_two_unbatched")
  assert bad.value.message == errors[0].message


def test_requests_that_differ_past_the_batch_dimension_run_apart_and_all_answer(core_with):
  core = core_with(params(2))
  # x is [None, 1]; the runtime also takes [n, 2], which cannot be concatenated with [n, 1].
  answers, errors = at_once([lambda: predict_x(core, [[2.0]]),
                             lambda: predict_x(core, [[2.0, 4.0]]),
                             lambda: predict_x(core, [[6.0]]),
                             lambda: predict_x(core, [[6.0, 8.0]])])
  assert errors == [None] * 4
  assert answers == [[[3.0]], [[3.0, 4.0]], [[5.0]], [[5.0, 6.0]]]
  assert session_runs(core) == 2


def test_variable_length_inputs_are_padded_with_their_first_value_as_tf_serving_pads(core_with):
  core = core_with(params(2, pad_variable_length_inputs=True))
  answers, errors = at_once([lambda: predict_x(core, [[2.0]]),
                             lambda: predict_x(core, [[4.0, 6.0]])])
  assert errors == [None, None] and session_runs(core) == 1
  # [[2]] is padded to [[2, 2]]; as in TF Serving, outputs keep the batch's widest shape.
  assert answers == [[[3.0, 3.0]], [[4.0, 5.0]]]


def test_per_model_parameters_come_from_each_version_dir(tmp_path):
  with_file = tiny_models.half_plus_two(str(tmp_path / "own" / "1"))
  with open(f"{with_file}/{batching.PER_MODEL_FILE}", "w") as f:
    f.write(config_files.to_text(params(4)))
  tiny_models.half_plus_two(str(tmp_path / "none" / "1"))
  config = config_files.model_config([("own", str(tmp_path / "own")),
                                      ("none", str(tmp_path / "none"))])
  core = ServerCore(config, CoreOptions(batching_parameters=params(2),
                                        enable_per_model_batching_parameters=True,
                                        max_num_load_retries=0))
  core.load()
  try:
    with pytest.raises(ServingError, match="Task size 5 is larger than maximum input batch "
                                           "size 4"):
      apis.predict(core, spec("predict_x", "own"), {"x": np.ones([5, 1], np.float32)})
    # Without a file of its own a version runs unbatched, whatever the server's parameters.
    _, outputs = apis.predict(core, spec("predict_x", "none"), {"x": np.ones([5, 1], np.float32)})
    assert outputs["y"].shape == (5, 1) and session_runs(core) == 0
  finally:
    core.close()


@pytest.mark.parametrize("contents, message", [
    ("max_batch_size { value: 8 } allowed_batch_sizes: 4",
     "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; "
     "expected 8"),
    ("max_batch_size { value: 0 }", "input_batch_size_limit must be positive; was 0"),
    ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be non-negative; was -1"),
    ("max_batch_size {", "Invalid protobuf file"),
])
def test_a_bad_per_model_file_fails_that_versions_load(tmp_path, contents, message):
  version_dir = tiny_models.half_plus_two(str(tmp_path / "m" / "1"))
  with open(f"{version_dir}/{batching.PER_MODEL_FILE}", "w") as f:
    f.write(contents)
  core = ServerCore(config_files.single_model_config("m", str(tmp_path / "m")),
                    CoreOptions(batching_parameters=params(8),
                                enable_per_model_batching_parameters=True,
                                max_num_load_retries=0))
  try:
    with pytest.raises(ServingError) as failed:
      core.load()
    assert message in failed.value.message and "{name: m version: 1}" in failed.value.message
  finally:
    core.close()


def test_a_versions_batching_goes_away_with_the_version(core_with):
  core = core_with(params(8, batch_timeout_micros=0))
  assert predict_x(core, [[1.0]]) == [[2.5]]
  with core.servable(spec("predict_x")) as servable:
    gone = weakref.ref(servable)
  del servable
  empty = model_server_config_pb2.ModelServerConfig()
  empty.model_config_list.SetInParent()
  core.reload_config(empty)  # the model is no longer configured: its version unloads
  gc.collect()
  assert gone() is None  # and its BatchingSession, queues and options with it


def test_too_few_batch_threads_are_refused_at_start(tmp_path):
  tiny_models.half_plus_two(str(tmp_path / "m" / "1"))
  with pytest.raises(ServingError, match="num_batch_threads must be positive; was 0"):
    ServerCore(config_files.single_model_config("m", str(tmp_path / "m")),
               CoreOptions(batching_parameters=params(8, num_batch_threads=0)))


def test_rest_requests_wait_for_their_batch_without_holding_a_thread(tmp_path):
  tiny_models.half_plus_two(str(tmp_path / "m" / "1"))
  options = ServerOptions(grpc_port=0, rest_api_port=0, rest_api_num_threads=2)
  with ModelServer(config_files.single_model_config("m", str(tmp_path / "m")), options,
                   CoreOptions(batching_parameters=params(8))) as server:
    answers, _ = at_once([
        lambda i=i: rest(server.rest_api_port, "POST", "/v1/models/m:predict",
                         {"instances": [[float(i)]]}) for i in range(8)])
    assert answers == [(200, {"predictions": [[0.5 * i + 2]]}) for i in range(8)]
    # Eight requests in one run, though only two threads answer REST requests.
    assert session_runs(server.core) == 1


# -- the scheduler's rules, with a session run the test controls ------------------------------


class Gate:
  """A session run that records its inputs and, while closed, blocks the thread running it."""

  def __init__(self):
    self.opened = threading.Event()
    self.entered = threading.Semaphore(0)
    self.seen = []

  def __call__(self, inputs, timeout_ms):
    self.seen.append({k: v.copy() for k, v in inputs.items()})
    self.entered.release()
    assert self.opened.wait(30)
    return {"y": inputs["x"] * 10}


class Scheduled:
  """Requests to one scheduler, each on its own thread."""

  def __init__(self, threads=1):
    self.metrics = monitoring.Metrics()
    self.scheduler = batching.BatchScheduler(threads, self.metrics)
    self.queues = {}  # one version's, as its BatchingSession holds them
    self.pool = futures.ThreadPoolExecutor(16)

  def submit(self, options, run, rows, key="k", timeout_ms=None):
    inputs = {"x": np.array(rows, np.float32)}
    return self.pool.submit(self.scheduler.run, self.queues, key, options, run, inputs,
                            timeout_ms)

  def close(self):
    self.scheduler.close()
    self.pool.shutdown()


@pytest.fixture
def scheduled():
  made = Scheduled()
  yield made
  made.close()


def wait_queued(scheduled, count):
  """Until `count` more requests joined queues (the scheduler's lock sees them)."""
  deadline = time.monotonic() + 10
  while time.monotonic() < deadline:
    with scheduled.scheduler._cond:  # pylint: disable=protected-access
      queued = sum(len(b.tasks) for q in scheduled.scheduler._pending for b in q.batches)
    if queued >= count:
      return
    time.sleep(0.005)
  raise AssertionError(f"{count} requests never queued")


def test_a_full_queue_answers_unavailable_and_serving_goes_on(scheduled):
  options = batching.QueueOptions(max_batch_size=1, max_enqueued_batches=1)
  gate = Gate()
  running = scheduled.submit(options, gate, [[1.0]])
  assert gate.entered.acquire(timeout=10)  # the one thread is busy with it
  queued = scheduled.submit(options, gate, [[2.0]])
  wait_queued(scheduled, 1)
  refused = scheduled.submit(options, gate, [[3.0]])
  with pytest.raises(ServingError) as error:
    refused.result(timeout=10)
  assert error.value.code == grpc.StatusCode.UNAVAILABLE
  assert error.value.message == ("The batch scheduling queue to which this task was submitted "
                                 "is full; currently 1 batches enqueued and "
                                 "max_enqueued_batches is 1")
  gate.opened.set()
  assert running.result(10)["y"].tolist() == [[10.0]]
  assert queued.result(10)["y"].tolist() == [[20.0]]
  assert scheduled.submit(options, gate, [[4.0]]).result(10)["y"].tolist() == [[40.0]]


def test_padding_rows_are_copies_of_the_last_requests_first_row(scheduled):
  options = batching.QueueOptions(max_batch_size=8, allowed_batch_sizes=(4, 8))
  gate = Gate()
  blocker = scheduled.submit(options, gate, [[0.0]], key="other")
  assert gate.entered.acquire(timeout=10)
  first = scheduled.submit(options, gate, [[1.0], [2.0]])
  wait_queued(scheduled, 1)
  second = scheduled.submit(options, gate, [[3.0]])
  wait_queued(scheduled, 2)
  gate.opened.set()
  assert first.result(10)["y"].tolist() == [[10.0], [20.0]]
  assert second.result(10)["y"].tolist() == [[30.0]]
  blocker.result(10)
  assert gate.seen[-1]["x"].tolist() == [[1.0], [2.0], [3.0], [3.0]]


def test_a_request_that_waited_past_its_deadline_is_not_run(scheduled):
  options = batching.QueueOptions(max_batch_size=4)
  gate = Gate()
  blocker = scheduled.submit(options, gate, [[0.0]], key="other")
  assert gate.entered.acquire(timeout=10)
  late = scheduled.submit(options, gate, [[1.0]], timeout_ms=20)
  wait_queued(scheduled, 1)
  time.sleep(0.05)
  gate.opened.set()
  with pytest.raises(ServingError) as error:
    late.result(10)
  assert error.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
  assert error.value.message == "Run() timeout exceeded while waiting in batching queue"
  blocker.result(10)
  assert len(gate.seen) == 1


def test_large_batch_splitting_cuts_a_request_into_execution_sized_runs(scheduled):
  options = batching.QueueOptions(max_batch_size=8, enable_large_batch_splitting=True,
                                  max_execution_batch_size=4)
  gate = Gate()
  gate.opened.set()
  rows = [[float(i)] for i in range(6)]
  assert scheduled.submit(options, gate, rows).result(10)["y"].tolist() == \
      [[10.0 * i] for i in range(6)]
  assert [len(seen["x"]) for seen in gate.seen] == [4, 2]


def test_a_batch_timeout_runs_a_batch_that_never_fills(scheduled):
  options = batching.QueueOptions(max_batch_size=8, batch_timeout_micros=50_000)
  gate = Gate()
  gate.opened.set()
  started = time.monotonic()
  assert scheduled.submit(options, gate, [[1.0]]).result(10)["y"].tolist() == [[10.0]]
  assert time.monotonic() - started >= 0.05


def test_inputs_the_batching_session_cannot_batch_are_refused_before_queueing(scheduled):
  options = batching.QueueOptions()
  with pytest.raises(ServingError, match="Batching Run\\(\\) input tensors must have equal "
                                         "0th-dimension size"):
    scheduled.scheduler.run(scheduled.queues, "k", options, Gate(),
                            {"a": np.zeros([2]), "b": np.zeros([3])}, None)
  with pytest.raises(ServingError, match="must have at least one dimension"):
    scheduled.scheduler.run(scheduled.queues, "k", options, Gate(), {"a": np.float32(1)}, None)


def test_unset_parameters_take_tensorflows_defaults():
  options = batching.QueueOptions.from_params(config_files.BatchingParameters())
  assert (options.max_batch_size, options.batch_timeout_micros, options.max_enqueued_batches,
          options.allowed_batch_sizes) == (1000, 0, 10, ())
  assert batching.num_batch_threads(config_files.BatchingParameters(), default=6) == 6
  zero = config_files.BatchingParameters()
  zero.max_enqueued_batches.value = 0
  assert batching.QueueOptions.from_params(zero).max_enqueued_batches == 1
