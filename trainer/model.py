"""The intent model: a canned `tf.estimator.DNNClassifier` over a hub text embedding."""

import dataclasses
from typing import Optional, Sequence, Tuple

import tensorflow as tf
from tensorflow.core.protobuf import rewriter_config_pb2

from trainer import cached_tokens
from trainer import settings
from trainer.settings import setting
from trainer.text_module import TextModuleConfig

TEXT_FEATURE = "text"
# The training examples' loss weights (see inputs.class_balance_weights); never served.
EXAMPLE_WEIGHT = "example_weight"

_OPTIMIZERS = {
    "Adam": tf.keras.optimizers.legacy.Adam,
    "Adagrad": tf.keras.optimizers.legacy.Adagrad,
    "SGD": tf.keras.optimizers.legacy.SGD,
    "RMSProp": tf.keras.optimizers.legacy.RMSprop,
    "Ftrl": tf.keras.optimizers.legacy.Ftrl,
}


def _unique_by_construction(indices: tf.Tensor) -> bool:
  """Whether `indices` are the values a `Unique` op returned, through reshapes only: an
  embedding lookup's gradient rows, which embedding_lookup_sparse gathers once per id."""
  while indices.op.type in ("Identity", "Reshape"):
    indices = indices.op.inputs[0]
  return indices.op.type == "Unique" and indices.value_index == 0


class _SkipsNeedlessDeduplication:
  """For a graph-mode optimizer whose sparse update must see each row once: it sums the
  gradient rows of repeated ids (a Unique and an UnsortedSegmentSum over the whole
  gradient, a tenth of a Banking77 step's op time) unless the ids are distinct by
  construction. Overrides the private hook the optimizer provides for exactly this."""

  def _resource_apply_sparse_duplicate_indices(self, grad, handle, indices):
    if _unique_by_construction(indices):
      return self._resource_apply_sparse(grad, handle, indices)
    return super()._resource_apply_sparse_duplicate_indices(grad, handle, indices)


class _AdagradOptimizer(_SkipsNeedlessDeduplication, tf.compat.v1.train.AdagradOptimizer):
  pass


class _FtrlOptimizer(_SkipsNeedlessDeduplication, tf.compat.v1.train.FtrlOptimizer):
  pass


# Optimizers whose update for a gathered embedding (IndexedSlices gradient) touches only
# the rows in the batch. Adam decays its moment slots over the whole table on every
# step, which makes it the slowest part of training a large embedding. These are the
# graph-mode optimizers: hub module variables lack what Keras optimizers expect. Plain
# SGD adds repeated rows with a scatter and needs no de-duplication to skip.
_SPARSE_OPTIMIZERS = {
    "Adagrad": _AdagradOptimizer,
    "SGD": tf.compat.v1.train.GradientDescentOptimizer,
    "Ftrl": _FtrlOptimizer,
}

CONSTANT = "constant"
COSINE = "cosine"
# Each maps (initial rate, training steps) to a Keras schedule of the step.
_SCHEDULES = {
    CONSTANT: None,
    COSINE: lambda rate, steps: tf.keras.optimizers.schedules.CosineDecay(rate, steps),
    "linear": lambda rate, steps: tf.keras.optimizers.schedules.PolynomialDecay(
        rate, steps, end_learning_rate=0.0),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  hidden_units: Tuple[int, ...] = setting((512,), "Sizes of the hidden layers, e.g. 256,128.")
  dropout: float = setting(0.5, "Dropout rate of the hidden layers (0 = none).")
  batch_norm: bool = setting(False, "Batch normalization after hidden layers.")
  optimizer: str = setting("Adam", "Optimizer of the dense layers.", choices=tuple(_OPTIMIZERS))
  learning_rate: float = setting(0.001, "Learning rate of the dense layers.")
  train_embeddings: bool = setting(
      True, "Train the text module's embeddings too (the canned estimator alone would leave "
      "them at their initial values).")
  embedding_optimizer: str = setting(
      "Adagrad", "Optimizer of the embedding table; all of these update only the rows a batch "
      "touches.", choices=tuple(_SPARSE_OPTIMIZERS))
  embedding_learning_rate: float = setting(0.5, "Learning rate of the embedding table.")
  learning_rate_schedule: str = setting(
      COSINE, "How both learning rates change over training: constant, cosine (decayed to "
      "zero at the last step) or linear (likewise, in a straight line).",
      choices=tuple(_SCHEDULES))

  def __post_init__(self):
    problems = settings.choice_problems(self)
    if not self.hidden_units or any(u < 1 for u in self.hidden_units):
      problems.append(f"hidden_units must be positive layer sizes, got {self.hidden_units}")
    if not 0.0 <= self.dropout < 1.0:
      problems.append(f"dropout must be in [0, 1), got {self.dropout}")
    for name in ("learning_rate", "embedding_learning_rate"):
      if getattr(self, name) <= 0:
        problems.append(f"{name} must be > 0, got {getattr(self, name)}")
    if problems:
      raise ValueError("Invalid model config: " + "; ".join(problems))


class ModuleAwareOptimizer(tf.keras.optimizers.legacy.Optimizer):
  """Also trains the trainable variables the canned estimator leaves out.

  `DNNClassifier` (v2) asks its optimizer to update only its own Keras layers, so a
  trainable hub module would silently stay at its initial values. This optimizer
  updates those layers with `dense` and every other trainable variable of the graph
  (the module's embedding table) with `sparse`, from one backward pass.
  """

  def __init__(self, dense, sparse, name="ModuleAwareOptimizer"):
    super().__init__(name)
    self._dense = dense
    self._sparse = sparse

  @property
  def iterations(self):
    return self._dense.iterations

  @iterations.setter
  def iterations(self, variable):
    # The estimator hands over the global step here; only `dense` advances it.
    self._dense.iterations = variable

  def get_updates(self, loss, params):
    own = {p.ref() for p in params}
    others = [v for v in tf.compat.v1.trainable_variables() if v.ref() not in own]
    grads = tf.gradients(loss, list(params) + others)
    updates = [self._dense.apply_gradients(zip(grads[:len(params)], params))]
    module_pairs = [(g, v) for g, v in zip(grads[len(params):], others) if g is not None]
    if module_pairs:
      updates.append(self._sparse.apply_gradients(module_pairs))
    return [tf.group(*updates)]

  def get_config(self):
    return {"name": self._name, "dense": self._dense.get_config(),
            "sparse": self._sparse.get_name()}


def learning_rates(config: ModelConfig, train_steps: int):
  """(dense, embedding) learning rates on the configured schedule: floats, or Keras
  schedules of the step. The dense optimizer evaluates its schedule at its iterations (the
  global step); the graph-mode embedding optimizer is given the schedule's tensor at the
  global step (see make_optimizer)."""
  schedule = _SCHEDULES[config.learning_rate_schedule]
  rates = (config.learning_rate, config.embedding_learning_rate)
  if schedule is None:
    return rates
  return tuple(schedule(rate, max(1, train_steps)) for rate in rates)


def make_optimizer(config: ModelConfig, train_steps: int):
  dense_rate, embedding_rate = learning_rates(config, train_steps)
  dense = _OPTIMIZERS[config.optimizer](learning_rate=dense_rate)
  if not config.train_embeddings:
    return dense
  if callable(embedding_rate):
    embedding_rate = embedding_rate(tf.compat.v1.train.get_or_create_global_step())
  sparse = _SPARSE_OPTIMIZERS[config.embedding_optimizer](learning_rate=embedding_rate)
  return ModuleAwareOptimizer(dense, sparse)


def training_session_config(run_config: tf.estimator.RunConfig) -> tf.estimator.RunConfig:
  """`run_config` with Grappler's arithmetic optimizer off in its sessions, keeping
  whatever else it set (the device filters of a cluster task among them).

  That optimizer's embedding-lookup simplification feeds `SparseSegmentSqrtN` from a read
  of the whole embedding table instead of the gathered rows. A table that sparse optimizers
  update in place is read in copy-on-read mode, so every step copied both tables (65 MB,
  two thirds of the op time of a Banking77 step) to use a few thousand rows of them.
  Grappler offers no switch for that stage alone; the rest of the arithmetic optimizer
  bought nothing measurable on this graph (see benchmarks/train_banking77.py's profile).
  """
  session_config = tf.compat.v1.ConfigProto()
  if run_config.session_config is not None:
    session_config.CopyFrom(run_config.session_config)
  else:
    # What the estimator itself would use in its place (its default is not public API).
    session_config.allow_soft_placement = True
    session_config.graph_options.rewrite_options.meta_optimizer_iterations = (
        rewriter_config_pb2.RewriterConfig.ONE)
  session_config.graph_options.rewrite_options.arithmetic_optimization = (
      rewriter_config_pb2.RewriterConfig.OFF)
  return run_config.replace(session_config=session_config)


def text_feature_column(module_path: str, trainable: bool,
                        cached_ids_of: Optional[TextModuleConfig] = None):
  """The text column; `cached_ids_of` (the module's config) trains it on cached ids."""
  return cached_tokens.text_feature_column(TEXT_FEATURE, module_path, trainable, cached_ids_of)


def build_estimator(config: ModelConfig, module_path: str, label_vocabulary: Sequence[str],
                    run_config: tf.estimator.RunConfig, train_steps: int,
                    weighted: bool = False, cached_ids_of: Optional[TextModuleConfig] = None
                    ) -> tf.estimator.DNNClassifier:
  """Labels are the intent names, so the `classes` output carries intent strings;
  `train_steps` is where learning-rate schedules end. A `weighted` estimator reads each
  example's loss weight from the EXAMPLE_WEIGHT feature in training and evaluation. With
  `cached_ids_of` (the config the module was built with) training reads the n-gram ids
  `cached_tokens.Tokenizer` adds to the features instead of tokenizing the text."""
  return tf.estimator.DNNClassifier(
      hidden_units=list(config.hidden_units),
      feature_columns=[text_feature_column(module_path, config.train_embeddings,
                                           cached_ids_of)],
      n_classes=len(label_vocabulary),
      label_vocabulary=list(label_vocabulary),
      optimizer=lambda: make_optimizer(config, train_steps),
      dropout=config.dropout or None,
      batch_norm=config.batch_norm,
      weight_column=EXAMPLE_WEIGHT if weighted else None,
      config=run_config)
