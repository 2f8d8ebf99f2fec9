"""Training really updates the hub module's embeddings, sparsely, and resumes."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from tests.helpers import small_config
from trainer import inputs
from trainer import model
from trainer import pipeline
from trainer import resume
from trainer.model import ModelConfig
from trainer.text_module import TextModuleConfig


def initial_module_embeddings(module_path):
  """Every embedding table's rows, the tables in name order one after the other."""
  import tensorflow_hub as hub
  with tf.Graph().as_default():
    module = hub.Module(module_path)
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      tables = sorted((v for v in module.variables if v.name.endswith("embeddings:0")),
                      key=lambda v: v.name)
      assert tables
      return np.concatenate(session.run(tables))


def trained_module_embeddings(job_dir):
  reader = tf.train.load_checkpoint(job_dir)
  names = sorted(n for n in reader.get_variable_to_shape_map()
                 if n.startswith("module/") and n.endswith("embeddings"))
  return np.concatenate([reader.get_tensor(n) for n in names])


def train_small(tmp_path, **model_overrides):
  # More OOV buckets than the data's rare n-grams can fill, so some rows are never used.
  config = small_config(tmp_path / "job", train_steps=30,
                        model=ModelConfig(hidden_units=(16,), **model_overrides),
                        text_module=TextModuleConfig(embedding_dim=16, oov_buckets=20_000))
  train, evaluation = pipeline.load_data(config)
  return pipeline.train(config, train, evaluation)


@pytest.mark.parametrize("optimizer", ["Adagrad", "SGD", "Ftrl"])
def test_training_updates_only_the_embedding_rows_batches_use(tmp_path, optimizer):
  result = train_small(tmp_path, embedding_optimizer=optimizer)
  before = initial_module_embeddings(result.module_path)
  after = trained_module_embeddings(str(tmp_path / "job"))
  changed_rows = np.any(before != after, axis=1)
  assert changed_rows.sum() > 100
  assert not changed_rows.all(), "rows of n-grams never seen in a batch must stay untouched"


def test_frozen_embeddings_stay_at_their_initial_values(tmp_path):
  result = train_small(tmp_path, train_embeddings=False)
  np.testing.assert_array_equal(initial_module_embeddings(result.module_path),
                                trained_module_embeddings(str(tmp_path / "job")))


@pytest.mark.parametrize("optimizer, sparse_op, dense_op", [
    ("Adagrad", "ResourceSparseApplyAdagrad", "ResourceApplyAdagrad"),
    ("SGD", "ResourceScatterAdd", "ResourceApplyGradientDescent"),
    ("Ftrl", "ResourceSparseApplyFtrl", "ResourceApplyFtrl"),
])
def test_embedding_update_is_a_sparse_apply(tmp_path, optimizer, sparse_op, dense_op):
  config = small_config(tmp_path / "job", model=ModelConfig(hidden_units=(16,),
                                                            embedding_optimizer=optimizer))
  train, _ = pipeline.load_data(config)
  module_path = pipeline.ensure_text_module(config, [e.text for e in train])
  estimator = pipeline.make_estimator(config, module_path, inputs.label_vocabulary(train),
                                     config.steps_for(len(train)))
  with tf.Graph().as_default() as graph:
    dataset = pipeline.train_input_fn(config, train, estimator.config, module_path)()
    features, labels = tf.compat.v1.data.make_initializable_iterator(dataset).get_next()
    estimator.model_fn(features, labels, tf.estimator.ModeKeys.TRAIN, estimator.config)
    op_types = {op.type for op in graph.get_operations()}
  # The dense layers train with Adam: any apply op of the embedding optimizer is the
  # embeddings', and it must be the sparse one.
  assert sparse_op in op_types
  assert dense_op not in op_types


def test_invalid_model_config_names_the_setting():
  with pytest.raises(ValueError, match="embedding_optimizer"):
    ModelConfig(embedding_optimizer="Adam")
  with pytest.raises(ValueError, match="dropout"):
    ModelConfig(dropout=1.5)


def test_a_class_balance_outside_zero_to_one_is_refused_naming_the_setting():
  with pytest.raises(ValueError, match=r"class_balance must be in \[0, 1\], got 1.5"):
    small_config("job", class_balance=1.5)


def test_rerunning_a_job_resumes_from_its_latest_checkpoint(tmp_path):
  job = tmp_path / "job"
  first = small_config(job, train_steps=20, save_checkpoints_steps=10)
  train, evaluation = pipeline.load_data(first)
  pipeline.train(first, train, evaluation)
  module_files = sorted(tf.io.gfile.listdir(str(job / "hub_module")))
  first_run_weights = tf.train.load_checkpoint(str(job / "model.ckpt-20")).get_tensor(
      "dnn/hiddenlayer_0/kernel")
  # Another seed: a run that started over would initialize differently.
  second = small_config(job, train_steps=30, save_checkpoints_steps=10, seed=first.seed + 1)
  result = pipeline.train(second, train, evaluation)
  assert result.checkpoint_path.endswith("model.ckpt-30")
  state = tf.train.get_checkpoint_state(str(job))
  steps = [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths]
  assert steps == [10, 20, 30]
  np.testing.assert_array_equal(
      tf.train.load_checkpoint(str(job / "model.ckpt-20")).get_tensor("dnn/hiddenlayer_0/kernel"),
      first_run_weights, err_msg="the second run started over instead of resuming at step 20")
  assert sorted(tf.io.gfile.listdir(str(job / "hub_module"))) == module_files


def test_rerunning_a_job_with_other_hidden_units_is_refused_and_keeps_the_job_dir(tmp_path):
  job = tmp_path / "job"
  first = small_config(job, train_steps=10, save_checkpoints_steps=10)
  train, evaluation = pipeline.load_data(first)
  pipeline.train(first, train, evaluation)
  files = sorted(tf.io.gfile.listdir(str(job)))
  # The learning rate only steers training: a rerun may change it and resume.
  steered = small_config(job, train_steps=20, save_checkpoints_steps=10,
                         model=ModelConfig(hidden_units=(32,), learning_rate=0.01))
  assert pipeline.train(steered, train, evaluation).checkpoint_path.endswith("model.ckpt-20")
  files = sorted(tf.io.gfile.listdir(str(job)))
  wider = small_config(job, train_steps=30, save_checkpoints_steps=10,
                       model=ModelConfig(hidden_units=(64,)))
  with pytest.raises(resume.IncompatibleJobDirError,
                     match=r"hidden_units: \[32\] there, \[64\] now.*another --job-dir"):
    pipeline.train(wider, train, evaluation)
  assert sorted(tf.io.gfile.listdir(str(job))) == files
  assert tf.train.latest_checkpoint(str(job)).endswith("model.ckpt-20")


def test_rerunning_a_job_on_other_labels_is_refused_naming_them(tmp_path):
  job = tmp_path / "job"
  config = small_config(job, train_steps=10, save_checkpoints_steps=10)
  train, evaluation = pipeline.load_data(config)
  labels = inputs.label_vocabulary(train)
  module = pipeline.module_dir(config)
  resume.check_and_record(config, labels, module)
  with pytest.raises(resume.IncompatibleJobDirError, match=r"labels: .* there"):
    resume.check_and_record(config, labels[1:], module)
  resume.check_and_record(config, labels, module)


def test_num_epochs_gives_exactly_the_steps_it_implies(tmp_path):
  # 616 bundled training examples, half an epoch in batches of 32: ceil(308 / 32) = 10 steps.
  config = small_config(tmp_path / "job", train_steps=0, num_epochs=0.5, batch_size=32,
                        save_checkpoints_steps=1000)
  train, evaluation = pipeline.load_data(config)
  assert len(train) == 616 and config.steps_for(len(train)) == 10
  result = pipeline.train(config, train, evaluation)
  assert int(result.checkpoint_path.rsplit("-", 1)[1]) == 10


@pytest.mark.slow
def test_hashed_ids_train_export_optimize_and_serve(tmp_path):
  config = small_config(
      tmp_path / "job", train_steps=200, optimize=True, smoke_test=True,
      text_module=TextModuleConfig(embedding_dim=32, char_ngrams=(3,), id_mode="hashed",
                                   hash_buckets=1 << 14))
  result = pipeline.run(config)
  assert result.train.eval_report["accuracy"] > 0.5
  assert result.optimized_dir and os.path.exists(os.path.join(result.optimized_dir,
                                                              "saved_model.pb"))
  with open(result.verdict_path) as f:
    assert json.load(f)["blessed"] is True


@pytest.mark.parametrize("schedule, middle", [("cosine", 0.5), ("linear", 0.5),
                                              ("constant", 1.0)])
def test_learning_rate_schedules_end_at_zero(schedule, middle):
  config = ModelConfig(learning_rate=0.002, embedding_learning_rate=0.4,
                       learning_rate_schedule=schedule)
  for configured, rate in zip((0.002, 0.4), model.learning_rates(config, 100)):
    at = (lambda step: float(rate(step))) if callable(rate) else (lambda step: rate)
    assert at(0) == pytest.approx(configured)
    assert at(50) == pytest.approx(middle * configured)
    assert at(100) == pytest.approx(0.0 if schedule != "constant" else configured)


def test_weight_averaging_saves_the_average_as_the_estimators_last_checkpoint(tmp_path,
                                                                             caplog):
  config = small_config(tmp_path / "job", train_steps=30, save_checkpoints_steps=10,
                        weight_averaging_start=0.5, weight_averaging_steps=5)
  train, evaluation = pipeline.load_data(config)
  caplog.set_level("INFO", logger="tensorflow")
  result = pipeline.train(config, train, evaluation)
  assert result.checkpoint_path.endswith("model.ckpt-30")
  state = tf.train.get_checkpoint_state(str(tmp_path / "job"))
  assert [int(p.rsplit("-", 1)[1]) for p in state.all_model_checkpoint_paths] == [10, 20, 30]
  # Snapshots after steps 15, 20, 25 and 30.
  assert "mean of 4 snapshots from step 15" in caplog.text


@pytest.mark.parametrize("class_balance, rare_share", [(0.0, 0.1), (1.0, 0.5)])
def test_class_balance_gives_a_rare_intent_its_weight_in_the_trained_model(
    tmp_path, class_balance, rare_share):
  # One text labelled 18 times "common" and twice "rare": the trained model's probability of
  # "rare" for it is the rare intent's share of the weighted loss, 2/20 unweighted and 1/2
  # with every intent weighing alike.
  rows = ["text,intent"] + ["hello there,common"] * 18 + ["hello there,rare"] * 2 + \
      ["goodbye now,other"] * 20
  data = tmp_path / "train.csv"
  data.write_text("\n".join(rows) + "\n")
  config = small_config(tmp_path / "job", train_files=str(data), eval_files=str(data),
                        class_balance=class_balance, token_dropout=0.0,
                        weight_averaging_start=0.0, train_steps=300,
                        model=ModelConfig(hidden_units=(8,), dropout=0.0))
  train, evaluation = pipeline.load_data(config)
  result = pipeline.train(config, train, evaluation)
  labels = inputs.label_vocabulary(train)
  (prediction,) = list(result.estimator.predict(inputs.make_input_fn(
      [inputs.Example("hello there", "rare", "t:1")], 1, shuffle=False, num_epochs=1)))
  probabilities = dict(zip(labels, prediction["probabilities"]))
  assert probabilities["rare"] / (probabilities["rare"] + probabilities["common"]) == \
      pytest.approx(rare_share, abs=0.05)


class NodeNames(tf.compat.v1.train.SessionRunHook):
  """The names of the nodes a few traced training steps ran, after Grappler's rewrites."""

  def __init__(self):
    self.names = set()

  def before_run(self, run_context):
    return tf.compat.v1.train.SessionRunArgs(None, options=tf.compat.v1.RunOptions(
        trace_level=tf.compat.v1.RunOptions.FULL_TRACE))

  def after_run(self, run_context, run_values):
    for device in run_values.run_metadata.step_stats.dev_stats:
      self.names.update(node.node_name for node in device.node_stats)


def test_training_steps_gather_embedding_rows_instead_of_reading_whole_tables(tmp_path):
  config = small_config(tmp_path / "job", train_steps=3, weight_averaging_start=0.0,
                        model=ModelConfig(hidden_units=(16,)))
  train, evaluation = pipeline.load_data(config)
  traced = NodeNames()
  pipeline.train(config, train, evaluation, hooks=[traced])
  assert any("ResourceSparseApplyAdagrad" in n or "update_module" in n for n in traced.names)
  # Grappler's arithmetic optimizer names the whole-table read it substitutes for the
  # gather; with it, every step copied both tables.
  assert not [n for n in traced.names if "SimplifyEmbeddingLookup" in n]


def test_the_training_session_config_keeps_a_cluster_tasks_device_filters():
  cluster = tf.compat.v1.ConfigProto(device_filters=["/job:ps", "/job:chief"])
  configured = model.training_session_config(
      tf.estimator.RunConfig(session_config=cluster)).session_config
  assert list(configured.device_filters) == ["/job:ps", "/job:chief"]
  assert configured.graph_options.rewrite_options.arithmetic_optimization == (
      rewriter_config_pb2.RewriterConfig.OFF)
  local = model.training_session_config(tf.estimator.RunConfig()).session_config
  assert local.allow_soft_placement  # as the estimator's own default


def sparse_update(optimizer_class, lookup, steps=3):
  """The table after `steps` updates of `optimizer_class` on the loss `lookup(table)`."""
  with tf.Graph().as_default():
    table = tf.compat.v1.get_variable(
        "table", initializer=tf.reshape(tf.range(24, dtype=tf.float32), [8, 3]) / 10.0,
        use_resource=True)
    loss = tf.reduce_sum(tf.square(lookup(table)))
    train_op = optimizer_class(learning_rate=0.3).minimize(loss, var_list=[table])
    with tf.compat.v1.Session() as session:
      session.run(tf.compat.v1.global_variables_initializer())
      for _ in range(steps):
        session.run(train_op)
      graph_ops = {op.type for op in tf.compat.v1.get_default_graph().get_operations()
                   if op.name.startswith(optimizer_class(0.1).get_name())}
      return session.run(table), graph_ops


def bag_of_repeated_ids(table):
  ids = tf.SparseTensor([[0, 0], [0, 1], [0, 2], [1, 0], [1, 1]], [3, 5, 3, 5, 6], [2, 3])
  return tf.nn.safe_embedding_lookup_sparse(table, tf.cast(ids, tf.int64), combiner="sqrtn")


def two_lookups_of_one_table(table):
  return tf.gather(table, [1, 2, 2]) + tf.gather(table, [2, 4, 1])


@pytest.mark.parametrize("name", ["Adagrad", "Ftrl"])
@pytest.mark.parametrize("lookup", [bag_of_repeated_ids, two_lookups_of_one_table])
def test_skipping_deduplication_changes_no_update(name, lookup):
  stock = {"Adagrad": tf.compat.v1.train.AdagradOptimizer,
           "Ftrl": tf.compat.v1.train.FtrlOptimizer}[name]
  ours, ours_ops = sparse_update(model._SPARSE_OPTIMIZERS[name], lookup)
  expected, _ = sparse_update(stock, lookup)
  np.testing.assert_allclose(ours, expected, rtol=1e-6)
  # Rows gathered once per id need no second de-duplication; two lookups' rows do.
  assert ("UnsortedSegmentSum" in ours_ops) == (lookup is two_lookups_of_one_table)
