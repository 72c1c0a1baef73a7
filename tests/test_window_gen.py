"""WindowGen: every window is seq_length + 1 real ids, splits never overlap, shards stitch."""

import os

import numpy as np
import pytest
import tensorflow as tf
from tfx.dsl.components.base import base_beam_executor
from tfx.types import artifact_utils, standard_artifacts

from components import examples_format, window_gen
from components.artifacts import Corpus, Vocabulary
from components.corpus_ingest import ingest
from components.text import CharVocab


def _artifact(cls, uri):
  a = cls()
  a.uri = str(uri)
  return a


def _run(tmp_path, text, seq_length, stride, eval_fraction=0.1, shard_chars=1000):
  src = tmp_path / 'src.txt'
  src.write_text(text, encoding='utf-8')
  corpus_dir, vocab_dir, ex_dir = (tmp_path / n for n in ('corpus', 'vocab', 'examples'))
  for d in (corpus_dir, vocab_dir, ex_dir):
    d.mkdir()
  ingest([str(src)], str(corpus_dir), seq_length=seq_length, eval_fraction=eval_fraction,
         shard_chars=shard_chars, normalization='')
  vocab = CharVocab.from_text(text)
  vocab.save(str(vocab_dir))
  examples = _artifact(standard_artifacts.Examples, ex_dir)
  executor = window_gen.Executor(base_beam_executor.BaseBeamExecutor.Context(
      beam_pipeline_args=['--direct_running_mode=in_memory']))
  executor.Do({'corpus': [_artifact(Corpus, corpus_dir)],
               'vocabulary': [_artifact(Vocabulary, vocab_dir)]},
              {'examples': [examples]},
              {'seq_length': seq_length, 'stride': stride, 'eval_fraction': eval_fraction})
  return examples, vocab


def _windows(examples, split):
  files = tf.io.gfile.glob(os.path.join(examples.uri, f'Split-{split}', '*.gz'))
  out = []
  for f in sorted(files):
    for record in tf.data.TFRecordDataset(f, compression_type='GZIP'):
      ex = tf.train.Example.FromString(record.numpy())
      out.append(list(ex.features.feature['ids'].int64_list.value))
  return out


def _text(n):
  rng = np.random.default_rng(0)
  alphabet = list('abcdefghij \n') + ['\u00e9', '\U0001F600']
  return ''.join(rng.choice(alphabet, size=n))


@pytest.mark.parametrize('stride', [10, 7, 11])
def test_windows_cover_each_split_in_order_and_never_cross_the_boundary(tmp_path, stride):
  text = _text(5000)
  examples, vocab = _run(tmp_path, text, seq_length=10, stride=stride, shard_chars=333)
  boundary = examples_format.split_boundary(len(text), 0.1)
  assert artifact_utils.decode_split_names(examples.split_names) == ['train', 'eval']
  for split, (lo, hi) in {'train': (0, boundary), 'eval': (boundary, len(text))}.items():
    got = _windows(examples, split)
    expected = [list(vocab.encode(text[s:s + 11])) for s in range(lo, hi - 10, stride)]
    assert got == expected, split
    assert examples.get_int_custom_property(f'num_windows_{split}') == len(expected)


def test_default_stride_matches_the_tutorials_input_target_shift(tmp_path):
  text = _text(3000)
  examples, vocab = _run(tmp_path, text, seq_length=100, stride=100)
  first = _windows(examples, 'train')[0]
  assert len(first) == 101
  assert vocab.decode(first[:-1]) == text[:100]       # input
  assert vocab.decode(first[1:]) == text[1:101]       # target, shifted by one


def test_fast_serialization_equals_protobuf_serialization():
  ids = np.arange(101) % 66
  fast = examples_format.serialize_fn(101, 66)
  slow = examples_format.serialize_fn(101, 300)   # the generic path
  assert fast(ids) == slow(ids)
  parsed = tf.io.parse_single_example(fast(ids), {'ids': tf.io.FixedLenFeature([101], tf.int64)})
  np.testing.assert_array_equal(parsed['ids'].numpy(), ids)


def test_large_vocabularies_use_the_generic_encoding(tmp_path):
  text = ''.join(chr(0x4e00 + i % 300) for i in range(3000))
  examples, vocab = _run(tmp_path, text, seq_length=20, stride=20)
  assert len(vocab) > 128
  assert _windows(examples, 'train')[0] == list(vocab.encode(text[:21]))


def test_window_starts_arithmetic():
  assert list(examples_format.window_starts(0, 50, 11, 10, 0, 50)) == [0, 10, 20, 30]
  # Only the starts inside [lo, hi), aligned to the region's grid.
  assert list(examples_format.window_starts(5, 100, 11, 10, 20, 60)) == [25, 35, 45, 55]
  assert list(examples_format.window_starts(0, 10, 11, 10, 0, 10)) == []
  assert examples_format.count_windows(90, 100, 11, 10) == 0


def test_train_windows_tile_the_text_across_shards_so_the_trainer_can_recut_them(tmp_path):
  from components import trainer_module  # pylint: disable=g-import-not-at-top
  text = _text(5000)
  examples, vocab = _run(tmp_path, text, seq_length=10, stride=10, shard_chars=333)
  train_text = text[:examples_format.split_boundary(len(text), 0.1)]
  ds = trainer_module.make_dataset(
      [os.path.join(examples.uri, 'Split-train', '*')], 10, 16, shuffle_buffer=1000,
      random_offsets=True, seed=0,
      num_windows=examples.get_int_custom_property('num_windows_train'))
  rows = 0
  for x, y in ds:   # the contiguity check inside would fail on any gap between files
    for row_x, row_y in zip(x.numpy(), y.numpy()):
      assert vocab.decode(list(row_x) + [row_y[-1]]) in train_text
      rows += 1
  assert rows == (examples.get_int_custom_property('num_windows_train') - 1) // 16 * 16


def test_a_vocabulary_of_thousands_of_characters_windows_exactly_like_tf_train_example(tmp_path):
  """~6,000 ids (CJK-sized): no one-byte shortcut, every record equals the proto's own bytes."""
  rng = np.random.default_rng(1)
  alphabet = [chr(0x4e00 + i) for i in range(6000)] + list('abc \n')
  text = ''.join(alphabet) + ''.join(rng.choice(alphabet, size=6000))
  examples, vocab = _run(tmp_path, text, seq_length=30, stride=17, shard_chars=2500)
  assert len(vocab) >= 5000
  assert examples_format.example_prefix(31, len(vocab)) is None
  boundary = examples_format.split_boundary(len(text), 0.1)
  for split, (lo, hi) in {'train': (0, boundary), 'eval': (boundary, len(text))}.items():
    files = sorted(tf.io.gfile.glob(os.path.join(examples.uri, f'Split-{split}', '*.gz')))
    records = [r.numpy() for r in tf.data.TFRecordDataset(files, compression_type='GZIP')]
    expected = [tf.train.Example(features=tf.train.Features(feature={'ids': tf.train.Feature(
        int64_list=tf.train.Int64List(value=vocab.encode(text[s:s + 31])))})).SerializeToString()
                for s in range(lo, hi - 30, 17)]
    assert records == expected, split
    ids = examples_format.parse_windows(tf.constant(records), 31).numpy()
    assert ids.max() >= 5000 and (ids >= 256).any() and (ids < 128).any()


@pytest.mark.parametrize('vocab_size', [2, 127, 128, 255, 256, 6001, 70000])
def test_every_record_encoding_equals_the_protobuf_one_at_every_vocabulary_size(vocab_size):
  rng = np.random.default_rng(vocab_size)
  ids = rng.integers(0, vocab_size, size=101)
  ids[:3] = [0, vocab_size - 1, min(127, vocab_size - 1)]
  got = examples_format.serialize_fn(101, vocab_size)(ids)
  assert got == examples_format._serialize_slow(ids)  # pylint: disable=protected-access
  np.testing.assert_array_equal(
      examples_format.parse_windows(tf.constant([got]), 101).numpy()[0], ids)


def test_count_records_names_a_truncated_shard_and_a_missing_one(tmp_path):
  serialize = examples_format.serialize_fn(11, 20)
  files = []
  for shard in range(2):
    path = str(tmp_path / examples_format.shard_file_name(shard, 2))
    with tf.io.TFRecordWriter(path, examples_format.writer_options()) as w:
      for start in range(50):
        w.write(serialize(np.arange(start, start + 11) % 20))
    files.append(path)
  assert examples_format.count_records(files, expected=100) == 100
  with pytest.raises(ValueError, match='50 windows, but WindowGen wrote 100: files are missing'):
    examples_format.count_records(files[:1], expected=100)
  with open(files[1], 'rb') as f:
    data = f.read()
  with open(files[1], 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(ValueError, match=f'{files[1]}: truncated or corrupted TFRecord file'):
    examples_format.count_records(files, expected=100)
