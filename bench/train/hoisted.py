"""A candidate for `components.model.build_keras_model`: the GRU's input projection
hoisted out of the time loop.

Keras' GRU multiplies each time step's input by its kernel inside the loop:
100 small [batch, embedding] x [embedding, 3*units] matmuls forward (and as many
backward). The same maths with that projection done once over all time steps
([batch*time, embedding] x [embedding, 3*units]) before the loop, which then only
does the recurrent matmul and the gates (reset_after=True, Keras' default):

  x_proj = Dense(3*units)(embedding)                      # kernel + input bias
  h_t    = GRU-recurrence(x_proj_t, h_{t-1})              # recurrent kernel + bias

Same parameters, same initialisers, same function; only the evaluation order
differs. Measured here as a speed lever; adopting it would also need
`CharRnnExport._serving_weights` to read the kernel from the Dense layer.
"""

import keras
from keras import ops


class ProjectedGRUCell(keras.layers.Layer):
  """The recurrent half of a Keras GRUCell (reset_after=True): inputs are x @ W + b_in."""

  def __init__(self, units, **kwargs):
    super().__init__(**kwargs)
    self.units = units
    self.state_size = units
    self.output_size = units

  def build(self, input_shape):
    self.recurrent_kernel = self.add_weight(
        shape=(self.units, 3 * self.units), initializer='orthogonal', name='recurrent_kernel')
    self.recurrent_bias = self.add_weight(
        shape=(3 * self.units,), initializer='zeros', name='recurrent_bias')

  def call(self, inputs, states, training=False):
    h = states[0] if isinstance(states, (list, tuple)) else states
    x_z, x_r, x_h = ops.split(inputs, 3, axis=-1)
    inner = ops.matmul(h, self.recurrent_kernel) + self.recurrent_bias
    r_z, r_r, r_h = ops.split(inner, 3, axis=-1)
    z = ops.sigmoid(x_z + r_z)
    r = ops.sigmoid(x_r + r_r)
    hh = ops.tanh(x_h + r * r_h)
    h = z * h + (1 - z) * hh
    return h, [h]


def build_keras_model(vocab_size: int, embedding_dim: int, rnn_units: int) -> keras.Model:
  ids = keras.Input(shape=(None,), dtype='int32', name='ids')
  x = keras.layers.Embedding(vocab_size, embedding_dim, name='embedding')(ids)
  x = keras.layers.Dense(3 * rnn_units, name='rnn_0_input_projection')(x)
  x = keras.layers.RNN(ProjectedGRUCell(rnn_units), return_sequences=True, name='rnn_0')(x)
  logits = keras.layers.Dense(vocab_size, name='logits', dtype='float32')(x)
  return keras.Model(ids, logits, name='char_rnn_hoisted')


def copy_weights(gru_model: keras.Model, hoisted_model: keras.Model) -> None:
  """`components.model.build_keras_model`'s weights -> this model (the same function)."""
  hoisted_model.get_layer('embedding').set_weights(gru_model.get_layer('embedding').get_weights())
  kernel, recurrent_kernel, bias = gru_model.get_layer('rnn_0').get_weights()
  hoisted_model.get_layer('rnn_0_input_projection').set_weights([kernel, bias[0]])
  hoisted_model.get_layer('rnn_0').set_weights([recurrent_kernel, bias[1]])
  hoisted_model.get_layer('logits').set_weights(gru_model.get_layer('logits').get_weights())
