"""Training with carried state: the streams' layout, their reproducibility, the train step."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from components import examples_format, tbptt
from components.model import CharRnnExport, build_keras_model, state_size

CFG = dict(embedding_dim=4, rnn_type='gru', rnn_units=8, num_layers=1, dropout=0.0)


def _take(ds, n):
  return [({k: v.numpy() for k, v in x.items()}, y.numpy()) for x, y in ds.take(n)]


def test_each_row_reads_on_where_it_ended_and_epochs_start_fresh_at_new_offsets():
  text = np.arange(1, 1002, dtype=np.int32)          # id i sits at position i - 1
  seq, batch = 10, 4
  steps = tbptt.steps_per_epoch(len(text), seq, batch)
  assert steps == (1001 - 10) // 40
  batches = _take(tbptt.stream_dataset(text, seq, batch, seed=5), 3 * steps)
  for t, (x, y) in enumerate(batches):
    ids = x['ids']
    assert ids.shape == y.shape == (batch, seq)
    np.testing.assert_array_equal(y, ids + 1)            # targets: the next id
    np.testing.assert_array_equal(ids, ids[:, :1] + np.arange(seq))   # contiguous text
    if t % steps:
      # Row b continues exactly where row b of the previous batch ended.
      np.testing.assert_array_equal(ids[:, 0], batches[t - 1][0]['ids'][:, -1] + 1)
      assert x['carry'].tolist() == [1.0] * batch
    else:
      assert x['carry'].tolist() == [0.0] * batch          # a new epoch starts from zero
      # The streams are disjoint slices of the text in order, each steps * seq long.
      np.testing.assert_array_equal(np.diff(ids[:, 0]), steps * seq)
  offsets = [batches[e * steps][0]['ids'][0, 0] - 1 for e in range(3)]
  assert len(set(offsets)) > 1                             # epochs cut the text differently
  assert all(0 <= o <= len(text) - 1 - batch * steps * seq for o in offsets)


def test_random_resets_and_resuming_are_reproducible_under_a_seed():
  text = np.arange(1, 2002, dtype=np.int32)
  a = _take(tbptt.stream_dataset(text, 10, 4, reset_prob=0.3, seed=2), 60)
  b = _take(tbptt.stream_dataset(text, 10, 4, reset_prob=0.3, seed=2, skip_batches=25), 35)
  for (xa, ya), (xb, yb) in zip(a[25:], b):
    np.testing.assert_array_equal(xa['ids'], xb['ids'])
    np.testing.assert_array_equal(xa['carry'], xb['carry'])
  carry = np.stack([x['carry'] for x, _ in a[1:49]])      # inside the first epoch
  assert 0.15 < 1 - carry.mean() < 0.45                    # about reset_prob of the rows


def _write_windows(directory, text, starts):
  """Windows of 10 + 1 ids at `starts`, in two shards named in text order, as WindowGen writes."""
  serialize = examples_format.serialize_fn(11, 50)
  directory.mkdir()
  half = len(starts) // 2
  for shard, part in enumerate((starts[:half], starts[half:])):
    with tf.io.TFRecordWriter(str(directory / examples_format.shard_file_name(shard, 2)),
                              examples_format.writer_options()) as w:
      for s in part:
        w.write(serialize(text[s:s + 11]))
  return sorted(str(p) for p in directory.iterdir())


def test_text_from_windows_recovers_the_ids_windowgen_tiled(tmp_path):
  text = np.random.default_rng(0).integers(1, 50, 257).astype(np.int32)
  starts = list(range(0, len(text) - 10, 10))
  files = _write_windows(tmp_path / 'tiled', text, starts)
  np.testing.assert_array_equal(tbptt.text_from_windows(files, 10), text[:starts[-1] + 11])
  overlapping = _write_windows(tmp_path / 'stride5', text, list(range(0, len(text) - 10, 5)))
  with pytest.raises(ValueError, match='tile the text'):
    tbptt.text_from_windows(overlapping, 10)


def test_train_step_starts_each_row_from_its_previous_final_state(tmp_path):
  keras.utils.set_random_seed(0)

  def build():
    model = build_keras_model(20, **CFG)
    trainer = tbptt.CarriedStateTrainer(model, batch_size=4)
    trainer.compile(optimizer=keras.optimizers.Adam(1e-2),
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model, trainer

  model, trainer = build()
  # The trainer's weights are the model's own: backups, best weights and the export see one model.
  assert [id(w) for w in trainer.weights] == [id(w) for w in model.weights]
  text = (np.arange(3000) % 19 + 1).astype(np.int32)
  batches = list(tbptt.stream_dataset(text, 12, 4, reset_prob=0.5, seed=1).take(3))
  s = state_size(**{k: CFG[k] for k in ('rnn_type', 'rnn_units', 'num_layers')})
  previous = np.zeros([4, s], np.float32)
  for x, y in batches:
    # The forward pass runs on the weights before the update.
    start = previous * x['carry'].numpy()[:, None]
    _, expected = trainer.state_io([x['ids'], tf.constant(start)], training=False)
    trainer.train_on_batch(x, y)
    np.testing.assert_allclose(trainer._carried.numpy(), expected.numpy(), atol=1e-5)  # pylint: disable=protected-access
    previous = expected.numpy()
  assert 0 < np.mean([x['carry'].numpy().mean() for x, _ in batches[1:]]) < 1
  # evaluate() is the plain model from a zero state, the gate's measure.
  x, y = batches[0]
  loss = trainer.evaluate(x['ids'], y, verbose=0)
  expected = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x['ids']))
  assert loss == pytest.approx(float(expected), rel=1e-5)
  # A step backup (save_weights, as BackupStore does) restores weights and optimizer;
  # the export and per-epoch samples read the trainer's layers as the model's.
  trainer.save_weights(str(tmp_path / 'backup.weights.h5'))
  restored_model, restored = build()
  restored.optimizer.build(restored.trainable_variables)
  restored.load_weights(str(tmp_path / 'backup.weights.h5'))
  for a, b in zip(model.get_weights(), restored_model.get_weights()):
    np.testing.assert_array_equal(a, b)
  assert int(restored.optimizer.iterations) == 3
  CharRnnExport(trainer, ['[UNK]'] + [chr(97 + i) for i in range(19)], CFG, 10)
