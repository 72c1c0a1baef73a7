"""The Trainer's module: its dataset, warm-start decisions and precision choice."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components import trainer_module, window_gen
from components.model import build_keras_model
from components.text import CharVocab

CFG = dict(embedding_dim=4, rnn_type='gru', rnn_units=8, num_layers=1, dropout=0.0)


def test_dataset_yields_inputs_and_targets_shifted_by_one(tmp_path):
  serialize = window_gen.serialize_fn(6, 20)
  path = tmp_path / 'Split-train'
  path.mkdir()
  with tf.io.TFRecordWriter(str(path / 'a.gz'), 'GZIP') as w:
    for start in range(10):
      w.write(serialize(np.arange(start, start + 6)))
  ds = trainer_module.make_dataset([str(path / '*')], seq_length=5, batch_size=4)
  batches = list(ds)
  assert len(batches) == 2   # 10 windows, batches of 4, remainder dropped
  x, y = batches[0]
  assert x.shape == y.shape == (4, 5)
  np.testing.assert_array_equal(x.numpy()[:, 1:], y.numpy()[:, :-1])


def _base_model_dir(tmp_path, tokens, model_config):
  """A served model's directory as the trainer module leaves it (weights in assets.extra)."""
  model = build_keras_model(len(tokens), **model_config)
  serving_dir = tmp_path / 'base' / 'Format-Serving'
  keras_dir = serving_dir / 'assets.extra' / trainer_module.KERAS_DIR
  keras_dir.mkdir(parents=True)
  (serving_dir / 'saved_model.pb').write_bytes(b'')
  model.save_weights(str(keras_dir / trainer_module.WEIGHTS_FILE))
  (keras_dir / trainer_module.CONFIG_FILE).write_text(
      json.dumps({'tokens': tokens, 'model_config': model_config}))
  return model, str(serving_dir)


def test_warm_start_loads_weights_only_when_vocabulary_and_architecture_match(tmp_path):
  vocab = CharVocab.from_text('abcdef')
  base, base_dir = _base_model_dir(tmp_path, vocab.tokens, CFG)
  model = build_keras_model(len(vocab), **CFG)
  note = trainer_module._warm_start(model, base_dir, vocab, CFG)
  assert note.startswith('warm-started from')
  for a, b in zip(model.get_weights(), base.get_weights()):
    np.testing.assert_array_equal(a, b)

  other_vocab = CharVocab.from_text('abcdefg')
  note = trainer_module._warm_start(build_keras_model(len(other_vocab), **CFG), base_dir,
                                    other_vocab, CFG)
  assert note == 'from scratch (the vocabulary changed since the served model)'
  bigger = dict(CFG, rnn_units=16)
  note = trainer_module._warm_start(build_keras_model(len(vocab), **bigger), base_dir, vocab,
                                    bigger)
  assert note == 'from scratch (the model architecture changed since the served model)'
  assert trainer_module._warm_start(model, None, vocab, CFG).startswith('from scratch (no served')
  empty = str(tmp_path / 'empty' / 'Format-Serving')   # ServedModel's placeholder
  assert trainer_module._warm_start(model, empty, vocab, CFG).startswith('from scratch (no served')


def test_precision_auto_follows_the_cpu():
  with open('/proc/cpuinfo') as f:
    native_bf16 = 'avx512_bf16' in f.read()
  expected = 'mixed_bfloat16' if native_bf16 else 'float32'
  assert trainer_module.resolve_precision('auto') == expected
  assert trainer_module.resolve_precision('float32') == 'float32'


def test_keras_evaluate_on_the_dataset_equals_the_mean_batch_loss(tmp_path):
  """Pins the workaround for Keras 3.12 on TF 2.16 dividing by one batch too many."""
  serialize = window_gen.serialize_fn(11, 20)
  rng = np.random.default_rng(0)
  (tmp_path / 'Split-eval').mkdir()
  with tf.io.TFRecordWriter(str(tmp_path / 'Split-eval' / 'a.gz'), 'GZIP') as w:
    for _ in range(40):
      w.write(serialize(rng.integers(1, 20, 11)))
  model = build_keras_model(20, **CFG)
  loss = tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  model.compile(loss=loss)
  for num_windows in (None, 40):   # counted, or given by WindowGen's property
    ds = trainer_module.make_dataset([str(tmp_path / 'Split-eval' / '*')], 10, 8,
                                     num_windows=num_windows)
    per_batch = [float(loss(y, model(x))) for x, y in ds]
    assert len(per_batch) == 5
    assert model.evaluate(ds, verbose=0) == pytest.approx(np.mean(per_batch), rel=1e-5)
