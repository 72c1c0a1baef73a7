"""The char-RNN's architecture in Keras alone: what trains, under any Keras backend.

Embedding -> GRU/LSTM stack -> Dense logits, as in the tutorial. It imports
Keras and nothing else of TensorFlow, so the same model builds where Keras runs
on JAX (bench/gpu trains the `tutorial` preset that way on a GPU machine without
TensorFlow); its weights file then loads into the TensorFlow model that
components/model.py exports. components/model.py re-exports every name here.
"""

import keras

# The hyperparameters that define the architecture: build_keras_model's
# arguments, and what a warm start must find unchanged.
MODEL_CONFIG_KEYS = ('embedding_dim', 'rnn_type', 'rnn_units', 'num_layers', 'dropout')
# The recurrent layers this module builds and components/model.py exports
# (`rnn_type`'s allowed values: training_config checks against this, so a new
# type is one entry here plus its step in CharRnnExport).
RNN_LAYERS = {'gru': keras.layers.GRU, 'lstm': keras.layers.LSTM}
RNN_TYPES = tuple(RNN_LAYERS)


def build_keras_model(vocab_size: int, embedding_dim: int, rnn_type: str,
                      rnn_units: int, num_layers: int, dropout: float) -> keras.Model:
  """Embedding -> `num_layers` x GRU/LSTM -> Dense logits, over [batch, time] ids."""
  rnn_cls = RNN_LAYERS[rnn_type]
  ids = keras.Input(shape=(None,), dtype='int32', name='ids')
  x = keras.layers.Embedding(vocab_size, embedding_dim, name='embedding')(ids)
  for i in range(num_layers):
    # Dropout between layers rather than inside the cell keeps the layer
    # eligible for cuDNN on GPUs. The layer also returns its final state, which
    # this model drops and `with_state_io` carries (training with carried state).
    x = rnn_cls(rnn_units, return_sequences=True, return_state=True, name=f'rnn_{i}')(x)[0]
    if dropout:
      x = keras.layers.Dropout(dropout, name=f'dropout_{i}')(x)
  # Logits stay float32 under mixed precision: softmax over bf16 loses too much.
  logits = keras.layers.Dense(vocab_size, name='logits', dtype='float32')(x)
  return keras.Model(ids, logits, name='char_rnn')


def build_optimizer(learning_rate, clipnorm: float = 0.0, weight_decay: float = 0.0,
                    beta_2: float = 0.999) -> keras.optimizers.Optimizer:
  """Adam, as the tutorial trains; AdamW when `weight_decay` > 0.

  AdamW's decay is decoupled from the gradient and scaled by the rate: every
  step takes learning_rate * weight_decay of each weight away. `learning_rate`
  may be a callable (the multi-worker loop's agreed rate). `clipnorm` clips each
  weight's gradient to that L2 norm (0: off). `beta_2`: Adam's second-moment
  decay (Keras' default; bench/quality/explore.py measures others).
  """
  clip = clipnorm or None
  if weight_decay:
    return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay, beta_2=beta_2,
                                  clipnorm=clip)
  return keras.optimizers.Adam(learning_rate, beta_2=beta_2, clipnorm=clip)


def with_state_io(model: keras.Model) -> keras.Model:
  """`model`'s own layers (shared weights) as (ids, states) -> (logits, final states).

  States are float32 [B, S] in the export's layout (every layer's state
  concatenated: [h] per GRU layer, [h, c] per LSTM layer), so a state from
  `one_step` continues here and the other way round. Training with truncated
  back-propagation through time feeds each batch the previous batch's final
  state (components/tbptt.py); `model` itself, and so the export, stays as is.
  """
  rnns = [layer for layer in model.layers if isinstance(layer, tuple(RNN_LAYERS.values()))]
  per_layer = 2 if isinstance(rnns[0], keras.layers.LSTM) else 1
  ids = keras.Input(shape=(None,), dtype='int32', name='ids')
  states = keras.Input(shape=(per_layer * len(rnns) * rnns[0].units,), name='states')
  parts = keras.ops.split(states, per_layer * len(rnns), axis=1)
  x = model.get_layer('embedding')(ids)
  finals = []
  for i, rnn in enumerate(rnns):
    x, *final = rnn(x, initial_state=parts[per_layer * i:per_layer * (i + 1)])
    finals += [keras.ops.cast(s, 'float32') for s in final]
    if any(layer.name == f'dropout_{i}' for layer in model.layers):
      x = model.get_layer(f'dropout_{i}')(x)
  logits = model.get_layer('logits')(x)
  return keras.Model([ids, states], [logits, keras.ops.concatenate(finals, axis=1)],
                     name='char_rnn_state_io')
