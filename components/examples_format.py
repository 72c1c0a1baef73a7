"""The Examples format that WindowGen writes and the Trainer and the gate read: one owner.

Like the TFX taxi template's `features.py`, every fact about the layout lives
here and nowhere else:

* where the splits go: `<examples.uri>/Split-<split>/data_tfrecord-<shard>-of-<n>.gz`
  (TFX's standard `Split-*` directories, GZIP TFRecords);
* the train/eval split formula: the first (1 - eval_fraction) of the corpus'
  characters train, the rest evaluate (nanoGPT's split), no window crosses it;
* which windows a region holds (`window_starts`), and the smallest corpus that
  gives one window of each split (CorpusIngest refuses smaller ones up front);
* a record: a `tf.train.Example` with one int64 feature `ids` of seq_length + 1
  ids (the model reads the first seq_length and predicts the last seq_length);
  how to write it (fast when every id fits one varint byte) and how to parse it.

CorpusIngest, WindowGen, the Trainer's run_fn and the EvaluationGate import
these; none of them spells a path, a key or the split formula itself.
"""

import contextlib
import gzip
import os
import zlib
from typing import Iterator, List, Optional

import numpy as np
import tensorflow as tf

FEATURE_KEY = 'ids'
SPLITS = ('train', 'eval')
COMPRESSION = 'GZIP'
# GZIP level 1: a third of the default level's time for files ~14% larger.
COMPRESSION_LEVEL = 1


# ------------------------------------------------------------------ layout
def split_dir(examples_uri: str, split: str) -> str:
  return os.path.join(examples_uri, f'Split-{split}')


def shard_file_name(shard: int, num_shards: int) -> str:
  # Named by corpus shard: sorted names read one after another give the
  # windows in text order (random_offsets relies on it).
  return f'data_tfrecord-{shard:05d}-of-{num_shards:05d}.gz'


def split_pattern(examples_uri: str, split: str) -> str:
  return os.path.join(split_dir(examples_uri, split), '*.gz')


def split_files(examples_uri: str, split: str) -> List[str]:
  """The split's TFRecord files in text order; an error naming the split if none."""
  files = sorted(tf.io.gfile.glob(split_pattern(examples_uri, split)))
  if not files:
    raise ValueError(f'{split_dir(examples_uri, split)}: no TFRecord files')
  return files


def _check_gzip_stream(path: str) -> None:
  """TF's GZIP reader ends a truncated file quietly at its last whole record; zlib
  (C speed, one pass) says whether the stream really ends where it should."""
  try:
    with tf.io.gfile.GFile(path, 'rb') as raw, gzip.GzipFile(fileobj=raw) as f:
      while f.read(1 << 22):
        pass
  except (EOFError, OSError, zlib.error) as e:
    raise ValueError(f'{path}: truncated or corrupted TFRecord file ({e})') from None


@contextlib.contextmanager
def _reading(path: str) -> Iterator[None]:
  """TF's read errors as one error that names the file."""
  try:
    yield
  except tf.errors.OpError as e:
    raise ValueError(f'{path}: truncated or corrupted TFRecord file '
                     f'({type(e).__name__}: {e.message.splitlines()[0][:200]})') from e


def read_windows(path: str, max_windows: int = 0) -> Iterator[np.ndarray]:
  """One file's windows as [n, window] id batches, in order (`max_windows`: stop
  after that many). A file that does not read to its end (truncated, corrupted)
  is an error naming it: nothing is judged on part of a file."""
  if not max_windows:
    _check_gzip_stream(path)   # a partial read cannot tell a cut file from a whole one
  ds = record_dataset([path])
  if max_windows:
    ds = ds.take(max_windows)
  with _reading(path):
    for serialized in ds.batch(1024):
      yield parse_windows(serialized).numpy()


def check_total(files: List[str], total: int, expected: Optional[int]) -> None:
  """A split holding another number of windows than WindowGen wrote is an error."""
  if expected is not None and total != expected:
    where = os.path.dirname(files[0]) if files else '(no files)'
    raise ValueError(f'{where}: {total} windows, but WindowGen wrote {expected}: '
                     'files are missing or truncated')


def count_records(files: List[str], expected: Optional[int] = None) -> int:
  """Reads every record of `files` with read_windows' checks (counted, not
  parsed), then the total against `expected` (WindowGen's count, when known)."""
  total = 0
  for path in files:
    _check_gzip_stream(path)
    with _reading(path):
      total += int(record_dataset([path]).reduce(np.int64(0), lambda n, _: n + 1))
  check_total(files, total, expected)
  return total


def record_dataset(files: List[str], **kwargs) -> tf.data.Dataset:
  return tf.data.TFRecordDataset(files, compression_type=COMPRESSION, **kwargs)


def writer_options() -> tf.io.TFRecordOptions:
  return tf.io.TFRecordOptions(compression_type=COMPRESSION,
                               compression_level=COMPRESSION_LEVEL)


# ------------------------------------------------------------ window maths
def split_boundary(num_chars: int, eval_fraction: float) -> int:
  """Index of the first eval character."""
  return int(num_chars * (1.0 - eval_fraction))


def window_starts(region_start: int, region_end: int, window: int, stride: int,
                  lo: int, hi: int) -> range:
  """Starts of the windows of one split region that fall in [lo, hi)."""
  last = region_end - window          # the last start that still fits
  if last < region_start:
    return range(0)
  first = max(lo, region_start)
  first = region_start + -(-(first - region_start) // stride) * stride  # round up
  return range(first, min(hi - 1, last) + 1, stride)


def count_windows(region_start: int, region_end: int, window: int, stride: int) -> int:
  return len(window_starts(region_start, region_end, window, stride,
                           region_start, region_end))


def min_corpus_chars(seq_length: int, eval_fraction: float) -> int:
  """Smallest corpus that yields one train and one eval window of seq_length + 1."""
  window = seq_length + 1
  n = window
  while True:
    boundary = split_boundary(n, eval_fraction)
    if boundary >= window and n - boundary >= window:
      return n
    n += 1


# ------------------------------------------------------------------ records
def _serialize_slow(ids: np.ndarray) -> bytes:
  return tf.train.Example(features=tf.train.Features(feature={
      FEATURE_KEY: tf.train.Feature(int64_list=tf.train.Int64List(value=ids))
  })).SerializeToString()


def example_prefix(window: int, vocab_size: int) -> Optional[bytes]:
  """The constant framing of a serialized window when every id is < 128, else None.

  Below 128 every varint is one byte, so a window's tf.train.Example is this
  prefix followed by its ids as bytes: about 50x faster than building protos,
  which was most of WindowGen's CPU time. Larger vocabularies (up to the
  thousands of a CJK corpus) take the generic path.
  """
  if vocab_size > 127:
    return None
  template = _serialize_slow(np.ones(window, dtype=np.int64))
  assert template[-window:] == b'\x01' * window, 'unexpected Example framing'
  return template[:-window]


def serialize_fn(window: int, vocab_size: int):
  """ids[window] -> serialized tf.train.Example bytes."""
  prefix = example_prefix(window, vocab_size)
  if prefix is None:
    return _serialize_slow
  return lambda ids: prefix + ids.astype(np.uint8).tobytes()


def parse_windows(serialized: tf.Tensor, window: Optional[int] = None) -> tf.Tensor:
  """A batch of serialized records -> int32 ids [batch, window].

  With `window` the length is checked (a record of another length is an
  error); without it the batch takes the records' own length.
  """
  if window is None:
    spec = {FEATURE_KEY: tf.io.FixedLenSequenceFeature([], tf.int64, allow_missing=True)}
  else:
    spec = {FEATURE_KEY: tf.io.FixedLenFeature([window], tf.int64)}
  return tf.cast(tf.io.parse_example(serialized, spec)[FEATURE_KEY], tf.int32)
