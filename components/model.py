"""The char-RNN: a Keras model to train, and a plain `tf.Module` to serve.

Training uses Keras (keras_model.py: Embedding -> GRU/LSTM stack -> Dense, as in the tutorial),
which picks cuDNN kernels on a GPU. Serving must not: TF Serving on a CPU cannot
run `CudnnRNN*` ops, and clients must not need Keras or this code. So the export
copies the trained weights into `CharRnnExport`, which re-implements the
recurrent step with matmuls and gates (the exact Keras equations) and runs the
time loop with `tf.while_loop`. `tests/test_model.py` pins the two to the same
numbers.

Signatures (B = batch, S = state size = all layers' states concatenated, V = vocab):
  one_step(inputs string[B], states float32[B,S], temperature float32[])
      -> chars string[B], states float32[B,S], logits float32[B,V]
  generate(prompt string[B], num_chars int32[], temperature float32[], seed int64[])
      -> text string[B], states float32[B,S]            (also `serving_default`)
  score(text string[B]) -> log_likelihood float32[B], num_scored int32[B]
"""

from typing import Any, Dict, List, Sequence

import keras
import tensorflow as tf

from components.keras_model import (  # pylint: disable=unused-import
    MODEL_CONFIG_KEYS, RNN_LAYERS, RNN_TYPES, build_keras_model, build_optimizer,
    with_state_io)
from components.text import UNK_TOKEN


# The architecture (build_keras_model, with_state_io and their constants) is
# keras_model.py's, Keras only so that it also builds on JAX; imported above so
# that callers keep finding it here.
# The dtypes CharRnnExport can multiply in (`serving_matmul_dtype`).
SERVING_MATMUL_DTYPES = ('float32', 'bfloat16')


def state_size(rnn_type: str, rnn_units: int, num_layers: int) -> int:
  return rnn_units * num_layers * (2 if rnn_type == 'lstm' else 1)


# --------------------------------------------------------------------- serve
class CharRnnExport(tf.Module):
  """Serving module built from a trained Keras model; uses core TF ops only."""

  def __init__(self, keras_model: keras.Model, tokens: Sequence[str],
               model_config: Dict[str, Any], max_generate_chars: int,
               matmul_dtype: str = 'float32'):
    """`matmul_dtype` bfloat16 stores the matrices in bf16 and multiplies in bf16
    (states, gates and logits stay float32): ~1.6x the throughput at batch 64 on
    CPUs with AVX512-BF16, slower at batch 1 and on CPUs without it."""
    super().__init__(name='char_rnn_export')
    self._dtype = tf.as_dtype(matmul_dtype)
    if tokens[0] != UNK_TOKEN:
      raise ValueError('tokens[0] must be [UNK]')
    self._rnn_type = model_config['rnn_type']
    self._units = int(model_config['rnn_units'])
    self._num_layers = int(model_config['num_layers'])
    self._vocab_size = len(tokens)
    self._state_size = state_size(self._rnn_type, self._units, self._num_layers)
    self._max_generate_chars = int(max_generate_chars)

    self.tokens = tf.constant(list(tokens), dtype=tf.string)
    self.char_table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(list(tokens[1:]), dtype=tf.string),
            tf.range(1, len(tokens), dtype=tf.int32)),
        default_value=0)  # unknown characters -> [UNK], never an error

    self.cells = []
    for layer in self._serving_weights(keras_model):
      self.cells.append({k: tf.Variable(tf.cast(v, self._dtype_of(k)), trainable=False)
                         for k, v in layer.items()})
    dense_w, dense_b = keras_model.get_layer('logits').get_weights()
    self.dense_w = tf.Variable(tf.cast(dense_w, self._dtype), trainable=False)
    self.dense_b = tf.Variable(dense_b, trainable=False)

  def _dtype_of(self, weight: str) -> tf.DType:
    # Matrices take the matmul dtype; biases stay float32.
    return self._dtype if weight.endswith('kernel') else tf.float32

  def _matmul(self, x: tf.Tensor, w: tf.Variable) -> tf.Tensor:
    return tf.cast(tf.matmul(tf.cast(x, w.dtype), w), tf.float32)

  def _serving_weights(self, keras_model: keras.Model) -> List[Dict[str, Any]]:
    """Each recurrent layer's Keras weights, arranged for `_step` (numpy)."""
    embedding = keras_model.get_layer('embedding').get_weights()[0]
    cells = []
    for i in range(self._num_layers):
      kernel, recurrent_kernel, bias = keras_model.get_layer(f'rnn_{i}').get_weights()
      # Embedding and the first input projection fold into one [V, G] table.
      # Keras' GRU (reset_after=True) keeps separate input and recurrent
      # biases, [2, 3*units]; its LSTM has one input bias, [4*units].
      cell = {'kernel': embedding @ kernel if i == 0 else kernel,
              'input_bias': bias[0] if self._rnn_type == 'gru' else bias,
              'recurrent_kernel': recurrent_kernel}
      if self._rnn_type == 'gru':
        cell['recurrent_bias'] = bias[1]
      cells.append(cell)
    return cells

  def assign_from(self, keras_model: keras.Model) -> None:
    """Copies newer weights of the same Keras model in (per-epoch samples)."""
    for variables, values in zip(self.cells, self._serving_weights(keras_model)):
      for key, value in values.items():
        variables[key].assign(tf.cast(value, variables[key].dtype))
    dense_w, dense_b = keras_model.get_layer('logits').get_weights()
    self.dense_w.assign(tf.cast(dense_w, self._dtype))
    self.dense_b.assign(dense_b)

  # ------------------------------------------------------------ the network
  def _split_state(self, states: tf.Tensor) -> List[tf.Tensor]:
    """[B, S] -> per layer: [h] for GRU, [h, c] for LSTM, each [B, units]."""
    return tf.split(states, self._state_size // self._units, axis=1)

  def _step(self, ids: tf.Tensor, states: tf.Tensor) -> tf.Tensor:
    """Consumes one id per row; returns the new [B, S] state."""
    parts = self._split_state(states)
    new_parts = []
    x = None
    for i, cell in enumerate(self.cells):
      if i == 0:
        x_proj = tf.cast(tf.gather(cell['kernel'], ids), tf.float32) + cell['input_bias']
      else:
        x_proj = self._matmul(x, cell['kernel']) + cell['input_bias']
      if self._rnn_type == 'gru':
        h = parts[i]
        inner = self._matmul(h, cell['recurrent_kernel']) + cell['recurrent_bias']
        x_z, x_r, x_h = tf.split(x_proj, 3, axis=1)
        r_z, r_r, r_h = tf.split(inner, 3, axis=1)
        z = tf.sigmoid(x_z + r_z)
        r = tf.sigmoid(x_r + r_r)
        h = z * h + (1.0 - z) * tf.tanh(x_h + r * r_h)
        new_parts.append(h)
      else:
        h, c = parts[2 * i], parts[2 * i + 1]
        gates = x_proj + self._matmul(h, cell['recurrent_kernel'])
        g_i, g_f, g_c, g_o = tf.split(gates, 4, axis=1)
        c = tf.sigmoid(g_f) * c + tf.sigmoid(g_i) * tf.tanh(g_c)
        h = tf.sigmoid(g_o) * tf.tanh(c)
        new_parts.extend([h, c])
      x = h
    return tf.concat(new_parts, axis=1)

  def _logits(self, states: tf.Tensor) -> tf.Tensor:
    """Logits for the next character, from the top layer's h."""
    top = self._split_state(states)[-2 if self._rnn_type == 'lstm' else -1]
    return self._matmul(top, self.dense_w) + self.dense_b

  def _encode(self, text: tf.Tensor):
    """string[B] -> padded ids [B, T] and lengths [B] (code points; bad UTF-8 -> U+FFFD)."""
    chars = tf.strings.unicode_split(text, 'UTF-8', errors='replace')
    ids = tf.ragged.map_flat_values(self.char_table.lookup, chars)
    return ids.to_tensor(default_value=0), tf.cast(ids.row_lengths(), tf.int32)

  def _consume(self, ids, lengths, states):
    """Runs every row through its own characters; padding never touches a state."""
    for t in tf.range(tf.shape(ids)[1]):
      tf.autograph.experimental.set_loop_options(
          shape_invariants=[(states, tf.TensorShape([None, self._state_size]))])
      stepped = self._step(ids[:, t], states)
      states = tf.where((t < lengths)[:, None], stepped, states)
    return states

  def _sample(self, logits, temperature, seed, step):
    """One id per row from softmax(logits / T), never [UNK]; T == 0 is argmax."""
    masked = tf.concat(
        [tf.fill([tf.shape(logits)[0], 1], float('-inf')), logits[:, 1:]], axis=1)
    if seed is None:
      sampled = tf.random.categorical(masked / tf.maximum(temperature, 1e-6), 1)
    else:
      sampled = tf.random.stateless_categorical(
          masked / tf.maximum(temperature, 1e-6), 1,
          seed=tf.stack([seed, tf.cast(step, tf.int64)]))
    greedy = tf.argmax(masked, axis=1, output_type=tf.int32)
    return tf.where(temperature > 0, tf.cast(sampled[:, 0], tf.int32), greedy)

  def _check_temperature(self, temperature):
    return tf.debugging.assert_greater_equal(
        temperature, 0.0, message='temperature must be >= 0 (0 = greedy)')

  # ------------------------------------------------------------ signatures
  def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    s = self._state_size
    one_step = tf.function(self._one_step, input_signature=[
        tf.TensorSpec([None], tf.string, name='inputs'),
        tf.TensorSpec([None, s], tf.float32, name='states'),
        tf.TensorSpec([], tf.float32, name='temperature')])
    generate = tf.function(self._generate, input_signature=[
        tf.TensorSpec([None], tf.string, name='prompt'),
        tf.TensorSpec([], tf.int32, name='num_chars'),
        tf.TensorSpec([], tf.float32, name='temperature'),
        tf.TensorSpec([], tf.int64, name='seed')])
    score = tf.function(self._score, input_signature=[
        tf.TensorSpec([None], tf.string, name='text')])
    generate_fn = generate.get_concrete_function()
    return {'one_step': one_step.get_concrete_function(),
            'generate': generate_fn,
            'serving_default': generate_fn,
            'score': score.get_concrete_function()}

  def _one_step(self, inputs, states, temperature):
    with tf.control_dependencies([
        self._check_temperature(temperature),
        tf.debugging.assert_equal(
            tf.shape(inputs)[0], tf.shape(states)[0],
            message='inputs and states must have the same batch size')]):
      ids, lengths = self._encode(inputs)
    states = self._consume(ids, lengths, states)
    logits = self._logits(states)
    next_ids = self._sample(logits, temperature, None, 0)
    return {'chars': tf.gather(self.tokens, next_ids), 'states': states,
            'logits': logits}

  def _generate(self, prompt, num_chars, temperature, seed):
    with tf.control_dependencies([
        self._check_temperature(temperature),
        tf.debugging.assert_non_negative(num_chars, message='num_chars must be >= 0'),
        tf.debugging.assert_less_equal(
            num_chars, self._max_generate_chars,
            message=f'num_chars must be <= {self._max_generate_chars} '
                    '(max_generate_chars of this model)')]):
      ids, lengths = self._encode(prompt)
    batch = tf.shape(prompt)[0]
    states = self._consume(ids, lengths, tf.zeros([batch, self._state_size]))
    # The returned state has consumed the prompt and every generated character
    # but the last, like one_step: feed the last character and this state to
    # one_step to continue.
    out = tf.TensorArray(tf.int32, size=num_chars, element_shape=[None])
    logits = self._logits(states)
    previous = tf.zeros([batch], tf.int32)
    for i in tf.range(num_chars):
      tf.autograph.experimental.set_loop_options(
          shape_invariants=[(states, tf.TensorShape([None, self._state_size])),
                            (logits, tf.TensorShape([None, self._vocab_size]))])
      if i > 0:
        states = self._step(previous, states)
        logits = self._logits(states)
      previous = self._sample(logits, temperature, seed, i)
      out = out.write(i, previous)
    generated = tf.cond(num_chars > 0,                 # [B, num_chars]
                        lambda: tf.transpose(out.stack()),
                        lambda: tf.zeros([batch, 0], tf.int32))
    text = tf.strings.reduce_join(tf.gather(self.tokens, generated), axis=1)
    return {'text': text, 'states': states}

  def _score(self, text):
    ids, lengths = self._encode(text)
    batch = tf.shape(text)[0]
    states = tf.zeros([batch, self._state_size])
    total = tf.zeros([batch])
    for t in tf.range(tf.shape(ids)[1]):
      tf.autograph.experimental.set_loop_options(
          shape_invariants=[(states, tf.TensorShape([None, self._state_size]))])
      if t > 0:
        log_probs = tf.nn.log_softmax(self._logits(states))
        picked = tf.gather(log_probs, ids[:, t], axis=1, batch_dims=1)
        total += tf.where(t < lengths, picked, 0.0)
      stepped = self._step(ids[:, t], states)
      states = tf.where((t < lengths)[:, None], stepped, states)
    return {'log_likelihood': total,
            'num_scored': tf.maximum(lengths - 1, 0)}


def export_serving_model(keras_model: keras.Model, tokens: Sequence[str],
                         model_config: Dict[str, Any], max_generate_chars: int,
                         export_dir: str, matmul_dtype: str = 'float32') -> CharRnnExport:
  module = CharRnnExport(keras_model, tokens, model_config, max_generate_chars, matmul_dtype)
  tf.saved_model.save(module, export_dir, signatures=module.signatures())
  return module
