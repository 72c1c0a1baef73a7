"""Training with the state carried across batches: truncated back-propagation through time.

The default stream (trainer_module.make_dataset) cuts the text into independent
windows, each started from a zero state: a model learns from at most
seq_length characters of context, and spends the first few characters of every
window guessing from nothing. char-rnn (and the tutorial's first version, whose
GRU was stateful) trains the other way: the text is laid out as `batch_size`
parallel streams, row b of batch t+1 continues where row b of batch t ended,
and each batch starts from the previous batch's final state. The gradient stops
at the batch boundary (the state is a constant here: "truncated" BPTT), so a
step costs what it costs today, but the model sees context from far back.

  stream_dataset     the streams, from the train text's ids (or WindowGen's
                     records, `text_from_windows`): endless, one random start
                     offset per epoch so epochs cut the text differently, a
                     `carry` flag per row that is 0 where the state must start
                     fresh (each epoch's first batch, and rows reset at random
                     with `reset_prob`, so the model still meets zero states,
                     as the gate and every generate() call start from one).
  CarriedStateTrainer  a Keras model to `fit` on that stream: its train step
                     feeds the carried state through `model.with_state_io`,
                     while `call` (evaluate, validation) is the plain model from
                     a zero state, the gate's measure. Its weights are the plain
                     model's own, so the export, backups and warm starts see
                     the same model as ever.
"""

from typing import List, Optional

import keras
import numpy as np
import tensorflow as tf

from components import examples_format
from components import model as model_lib


# -------------------------------------------------------------------- data
def text_from_windows(files: List[str], seq_length: int) -> np.ndarray:
  """WindowGen's train windows (stride == seq_length, files in text order) -> the ids they tile."""
  windows = []
  for batch in examples_format.record_dataset(sorted(files)).batch(4096):
    windows.append(examples_format.parse_windows(batch, seq_length + 1).numpy())
  windows = np.concatenate(windows)
  if not np.array_equal(windows[:-1, -1], windows[1:, 0]):
    raise ValueError('carried state needs windows that tile the text (WindowGen stride == '
                     'seq_length, files in text order); these do not')
  return np.concatenate([windows[:, :-1].reshape(-1), windows[-1, -1:]])


def steps_per_epoch(num_ids: int, seq_length: int, batch_size: int) -> int:
  """Batches per pass: `batch_size` streams of steps * seq_length ids each, with at
  least seq_length ids to spare so the start offset can move the cuts anywhere."""
  steps = (num_ids - seq_length) // (batch_size * seq_length)
  if steps < 1:
    raise ValueError(f'{num_ids} ids are too few for {batch_size} streams of '
                     f'{seq_length}: lower batch_size or seq_length')
  return steps


def stream_dataset(ids: np.ndarray, seq_length: int, batch_size: int,
                   reset_prob: float = 0.0, seed: Optional[int] = None,
                   skip_batches: int = 0) -> tf.data.Dataset:
  """Endless ({'ids', 'carry'}, targets) batches: row b of consecutive batches reads on.

  Epoch e starts at a random offset in the spare ids and lays the text out as
  `batch_size` contiguous streams; `carry` (float32 [batch]) is 0 on the
  epoch's first batch and, with probability `reset_prob`, on any row. With a
  seed the stream is reproducible, and `skip_batches` resumes it exactly.
  """
  ids = np.asarray(ids, np.int32)
  steps = steps_per_epoch(len(ids), seq_length, batch_size)
  span = steps * seq_length                        # ids each stream reads per epoch
  spare = len(ids) - 1 - batch_size * span         # >= seq_length - 1
  text = tf.constant(ids)
  seed = int(np.random.default_rng().integers(2**31)) if seed is None else seed
  # Where row b's window of the epoch's first batch starts, before the offset.
  rows = tf.range(batch_size, dtype=tf.int64)[:, None] * span + tf.range(
      seq_length + 1, dtype=tf.int64)

  def batch(n):
    """The stream's n-th batch: a function of n alone, so resuming is a counter's start."""
    epoch, t = n // steps, n % steps
    offset = tf.random.stateless_uniform([], [seed, epoch], 0, spare + 1, dtype=tf.int64)
    windows = tf.gather(text, offset + t * seq_length + rows)
    fresh = tf.random.stateless_uniform([batch_size], [seed + 1, n]) < reset_prob
    carry = tf.where(t == 0, 0.0, 1.0 - tf.cast(fresh, tf.float32))
    return {'ids': windows[:, :-1], 'carry': carry}, windows[:, 1:]

  return tf.data.Dataset.counter(start=skip_batches, dtype=tf.int64).map(
      batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(tf.data.AUTOTUNE)


# ------------------------------------------------------------------- train
class CarriedStateTrainer(keras.Model):
  """Fits `model` on `stream_dataset` with each row's state carried to its next batch.

  `call` is `model` from a zero state (so evaluate() and validation measure what
  the gate measures); `train_step` starts each row from the state its previous
  batch ended in, times the row's `carry` flag. The state lives in a variable
  outside the weights: get_weights()/set_weights() are `model`'s own.
  """

  def __init__(self, model: keras.Model, batch_size: int, **kwargs):
    super().__init__(name='carried_state_trainer', **kwargs)
    self.char_rnn = model
    self.state_io = model_lib.with_state_io(model)
    size = self.state_io.inputs[1].shape[1]
    # Not a Keras weight (a plain tf.Variable is not tracked as one): a restore
    # or a set_weights never sees it, and a resumed run starts it from zero.
    self._carried = tf.Variable(tf.zeros([batch_size, size]), trainable=False,
                                name='carried_state')
    self.built = True    # its layers are `model`'s, built; save_weights needs the flag

  def get_layer(self, name=None, index=None):
    # CharRnnExport (the export, per-epoch samples) reads layers by name: the model's.
    return self.char_rnn.get_layer(name, index)

  def call(self, inputs, training=False):
    ids = inputs['ids'] if isinstance(inputs, dict) else inputs
    return self.char_rnn(ids, training=training)

  def train_step(self, data):
    inputs, targets, _ = keras.utils.unpack_x_y_sample_weight(data)
    states = self._carried * inputs['carry'][:, None]
    with tf.GradientTape() as tape:
      logits, final = self.state_io([inputs['ids'], states], training=True)
      loss = self.compute_loss(x=inputs, y=targets, y_pred=logits)
      scaled = self.optimizer.scale_loss(loss)
    weights = self.trainable_weights
    self.optimizer.apply_gradients(zip(tape.gradient(scaled, weights), weights))
    # The next batch starts here; as a variable it is a constant to the next
    # step's gradient: the truncation.
    self._carried.assign(final)
    for metric in self.metrics:
      if metric.name == 'loss':
        metric.update_state(loss)
      else:
        metric.update_state(targets, logits)
    return {m.name: m.result() for m in self.metrics}
