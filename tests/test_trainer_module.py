"""The Trainer's module: its dataset, warm-start decisions and precision choice."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from components import examples_format, trainer_module, training
from components.model import build_keras_model, build_optimizer
from components.text import CharVocab

CFG = dict(embedding_dim=4, rnn_type='gru', rnn_units=8, num_layers=1, dropout=0.0)


def test_dataset_yields_inputs_and_targets_shifted_by_one(tmp_path):
  serialize = examples_format.serialize_fn(6, 20)
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


def _tiling_windows(path, text, seq_length, stride):
  """Windows of `text` as WindowGen writes them: seq_length + 1 ids every `stride`."""
  serialize = examples_format.serialize_fn(seq_length + 1, 1000)
  path.mkdir(parents=True)
  with tf.io.TFRecordWriter(str(path / 'data_tfrecord-00000-of-00001.gz'), 'GZIP') as w:
    for start in range(0, len(text) - seq_length, stride):
      w.write(serialize(text[start:start + seq_length + 1]))
  return [str(path / '*')]


def test_random_offsets_cut_windows_anywhere_in_the_text_and_differ_every_epoch(tmp_path):
  text = np.arange(1, 402)                       # 40 windows of 10 + 1 ids, stride 10
  files = _tiling_windows(tmp_path / 'Split-train', text, 10, 10)
  ds = trainer_module.make_dataset(files, 10, 4, shuffle_buffer=100, random_offsets=True,
                                   seed=3, num_windows=40)
  assert ds.cardinality() == 39 // 4             # pairs of neighbours: one fewer window
  epochs = [[(x.numpy(), y.numpy()) for x, y in ds] for _ in range(2)]
  starts = []
  for epoch in epochs:
    assert len(epoch) == 9
    for x, y in epoch:
      for row_x, row_y in zip(x, y):
        # Every row is a contiguous cut of the text and its target is shifted by one.
        np.testing.assert_array_equal(row_x, np.arange(row_x[0], row_x[0] + 10))
        np.testing.assert_array_equal(row_y, row_x + 1)
        starts.append(int(row_x[0]) - 1)
  assert len({s % 10 for s in starts}) > 5       # not only multiples of the stride
  assert max(starts) <= len(text) - 11
  first, second = ([int(x[0, 0]) for x, _ in epoch] for epoch in epochs)
  assert first != second                         # a new cut and order every epoch
  again = trainer_module.make_dataset(files, 10, 4, shuffle_buffer=100, random_offsets=True,
                                      seed=3, num_windows=40)
  assert [int(x[0, 0]) for x, _ in again] == first   # reproducible under a seed


def test_random_offsets_refuse_windows_that_do_not_tile_the_text(tmp_path):
  files = _tiling_windows(tmp_path / 'Split-train', np.arange(1, 402), 10, 7)
  ds = trainer_module.make_dataset(files, 10, 4, random_offsets=True)
  with pytest.raises(tf.errors.InvalidArgumentError, match='random_offsets needs windows '
                     'that tile the text'):
    list(ds)


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


def test_precision_without_measuring_follows_the_cpu_flags():
  with open('/proc/cpuinfo') as f:
    text = f.read()
  native_bf16 = 'avx512_bf16' in text or 'amx_bf16' in text
  assert bool(training.native_bf16_flags()) == native_bf16
  expected = 'mixed_bfloat16' if native_bf16 else 'float32'
  assert trainer_module.resolve_precision('auto') == expected
  assert trainer_module.resolve_precision('float32') == 'float32'


def test_auto_precision_keeps_bf16_only_when_it_is_faster_by_the_margin():
  faster = training.pick_faster({'float32': 100.0, 'mixed_bfloat16': 80.0})
  assert faster.precision == 'mixed_bfloat16' and '1.25x faster' in faster.reason
  assert faster.timings_ms == {'float32': 100.0, 'mixed_bfloat16': 80.0}
  # Within the margin (5%) or slower: float32 keeps its precision.
  for bf16 in (96.0, 100.0, 130.0):
    choice = training.pick_faster({'float32': 100.0, 'mixed_bfloat16': bf16})
    assert choice.precision == 'float32' and 'not faster by 5%' in choice.reason
  assert training.pick_faster({'float32': 100.0, 'mixed_bfloat16': 95.0}).precision == (
      'mixed_bfloat16')
  with pytest.raises(ValueError, match="step time of mixed_bfloat16 is nan ms"):
    training.pick_faster({'float32': 100.0, 'mixed_bfloat16': float('nan')})


def test_auto_precision_measures_only_on_cpus_with_native_bf16():
  calls = []
  def timings():
    calls.append(1)
    return {'float32': 50.0, 'mixed_bfloat16': 30.0}
  choice = training.choose_precision('auto', timings, gpu=False, bf16_flags=[])
  assert choice.precision == 'float32' and choice.timings_ms is None and not calls
  assert 'no native bf16' in choice.reason
  assert training.choose_precision('auto', timings, gpu=True).precision == 'float32'
  assert not calls
  choice = training.choose_precision('auto', timings, gpu=False, bf16_flags=['amx_bf16'])
  assert calls and choice.precision == 'mixed_bfloat16'
  assert choice.reason.startswith('auto on a CPU with amx_bf16: measured 30.0 ms/step')
  set_in_preset = training.choose_precision('mixed_bfloat16', timings, gpu=False, bf16_flags=[])
  assert set_in_preset.precision == 'mixed_bfloat16' and len(calls) == 1


def test_auto_precision_times_both_candidates_and_trains_on_from_the_initial_weights(tmp_path):
  """A real measurement on a tiny model (bf16 is emulated where the CPU lacks it)."""
  from components import training_config  # pylint: disable=g-import-not-at-top
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  text = np.random.default_rng(0).integers(1, 20, 401)
  files = _tiling_windows(tmp_path / 'Split-train', text, 10, 10)
  config = training_config.TrainingConfig.from_settings(configs.get_preset(
      'tiny', 'precision=auto, seq_length=10, batch_size=4, random_offsets=true, dropout=0.1'))
  model_config = {k: getattr(config, k) for k in CFG}
  choice, model, first_step = trainer_module._model_at_chosen_precision(
      config, 20, model_config, 7, files, 40, bf16_flags=['avx512_bf16'])
  assert set(choice.timings_ms) == {'float32', 'mixed_bfloat16'}
  assert all(t > 0 for t in choice.timings_ms.values())
  assert choice.precision == training.pick_faster(choice.timings_ms).precision
  assert 'measured' in choice.reason and first_step > 0
  assert model.dtype_policy.name == choice.precision
  # The measured steps are undone: weights, dropout seeds and optimizer state are
  # those of a model built from the same seed, so training starts from scratch.
  fresh = trainer_module._build_model(config, 20, model_config, choice.precision, 7)
  for a, b in zip(model.variables, fresh.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
  assert int(model.optimizer.iterations.numpy()) == 0
  assert all(not np.any(v.numpy()) for v in model.optimizer.variables
             if 'momentum' in v.path or 'velocity' in v.path)
  # Without native bf16 nothing is timed and float32 is built directly.
  choice, model, first_step = trainer_module._model_at_chosen_precision(
      config, 20, model_config, 7, files, 40, bf16_flags=[])
  assert (choice.precision, choice.timings_ms, first_step) == ('float32', None, None)


def test_keras_evaluate_on_the_dataset_equals_the_mean_batch_loss(tmp_path):
  """Pins the workaround for Keras 3.12 on TF 2.16 dividing by one batch too many."""
  serialize = examples_format.serialize_fn(11, 20)
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


def test_a_stream_skipped_by_n_batches_is_the_uninterrupted_stream_from_batch_n(tmp_path):
  """How a resumed run sees the data an uninterrupted one would (same seed)."""
  files = _tiling_windows(tmp_path / 'Split-train', np.arange(1, 402), 10, 10)
  for offsets in (False, True):
    def stream(skip):
      ds = trainer_module.make_dataset(files, 10, 4, shuffle_buffer=100, repeat=True,
                                       random_offsets=offsets, seed=11, skip_batches=skip)
      return [x.numpy() for x, _ in ds.take(25 - skip)]
    whole = stream(0)
    resumed = stream(13)          # more than one pass over the 40 windows
    assert len(resumed) == 12
    for a, b in zip(whole[13:], resumed):
      np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='skip_batches needs repeat=True'):
    trainer_module.make_dataset(files, 10, 4, skip_batches=2)


def test_an_epoch_is_one_pass_unless_steps_per_epoch_says_otherwise(tmp_path):
  from components.training_config import TrainingConfig  # pylint: disable=g-import-not-at-top
  from pipeline import configs  # pylint: disable=g-import-not-at-top
  files = _tiling_windows(tmp_path / 'Split-train', np.arange(1, 402), 10, 10)   # 40 windows
  def config(overrides):
    return TrainingConfig.from_settings(configs.get_preset('tiny', overrides))
  assert trainer_module.steps_per_epoch(config('steps_per_epoch=7'), 40, files) == 7
  assert trainer_module.steps_per_epoch(config('steps_per_epoch=None, batch_size=8'), None,
                                        files) == 5
  assert trainer_module.steps_per_epoch(
      config('steps_per_epoch=None, batch_size=8, random_offsets=true'), 40, files) == 4
  with pytest.raises(ValueError, match='fewer than one batch of batch_size=64'):
    trainer_module.steps_per_epoch(config('steps_per_epoch=None, batch_size=64'), 40, files)


@pytest.mark.parametrize('weight_decay', [0.0, 0.5])
def test_weight_decay_trains_with_adamw_which_takes_rate_times_decay_off_every_weight(
    weight_decay):
  """With zero gradients Adam moves nothing; AdamW still shrinks each weight by lr * wd."""
  model = build_keras_model(20, **CFG)
  optimizer = build_optimizer(0.1, clipnorm=1.0, weight_decay=weight_decay)
  assert type(optimizer).__name__ == ('AdamW' if weight_decay else 'Adam')
  before = [w.numpy() for w in model.trainable_weights]
  optimizer.apply_gradients([(tf.zeros_like(w), w) for w in model.trainable_weights])
  for old, new in zip(before, model.trainable_weights):
    np.testing.assert_allclose(new.numpy(), old * (1 - 0.1 * weight_decay), rtol=1e-6,
                               atol=1e-7)
