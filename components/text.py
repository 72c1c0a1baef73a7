"""The one character <-> id mapping, and the on-disk formats of Corpus and Vocabulary.

Windowing, training and export all go through `CharVocab`, so the ids the model
was trained on are the ids it is served with. The ids are exactly those of the
tutorial's `tf.keras.layers.StringLookup(vocabulary=sorted(set(text)),
mask_token=None)`: 0 is `[UNK]`, then every distinct character by code point.
"""

import hashlib
import json
import os
from typing import Dict, Iterable, Iterator, List, Sequence

import numpy as np
import tensorflow as tf

UNK_TOKEN = '[UNK]'
VOCAB_FILE = 'vocabulary.json'
VOCAB_FORMAT = 'charrnn.vocabulary/v1'
CORPUS_INDEX_FILE = 'index.json'
_MAX_CODE_POINT = 0x10FFFF


class CharVocab:
  """Token list with vectorised encode/decode (unknown characters -> id 0)."""

  def __init__(self, tokens: Sequence[str]):
    tokens = list(tokens)
    if not tokens or tokens[0] != UNK_TOKEN:
      raise ValueError(f'vocabulary must start with {UNK_TOKEN!r}')
    chars = tokens[1:]
    if any(len(c) != 1 for c in chars):
      raise ValueError('vocabulary entries after [UNK] must be single characters')
    if chars != sorted(set(chars)):
      raise ValueError('vocabulary characters must be distinct and sorted by code point')
    self.tokens = tokens
    self.chars = chars
    # Code point -> id for every Unicode scalar value (4.4 MB): encoding a
    # string is then one numpy gather over its UTF-32 code units.
    self._lut = np.zeros(_MAX_CODE_POINT + 1, dtype=np.int32)
    self._lut[[ord(c) for c in chars]] = np.arange(1, len(chars) + 1, dtype=np.int32)

  @classmethod
  def from_text(cls, text: str) -> 'CharVocab':
    return cls([UNK_TOKEN] + sorted(set(text)))

  @classmethod
  def from_chars(cls, chars: Iterable[str]) -> 'CharVocab':
    return cls([UNK_TOKEN] + sorted(set(chars)))

  def __len__(self) -> int:
    return len(self.tokens)

  def __eq__(self, other) -> bool:
    return isinstance(other, CharVocab) and self.tokens == other.tokens

  @property
  def fingerprint(self) -> str:
    return hashlib.sha256(
        json.dumps(self.tokens, ensure_ascii=True).encode('ascii')).hexdigest()

  def encode(self, text: str) -> np.ndarray:
    """int32 ids, one per code point; characters outside the vocabulary -> 0."""
    if not text:
      return np.zeros(0, dtype=np.int32)
    return self._lut[np.frombuffer(text.encode('utf-32-le'), dtype='<u4')]

  def decode(self, ids: Iterable[int]) -> str:
    return ''.join(self.tokens[i] for i in ids)

  # ---------------------------------------------------------------- storage
  def save(self, directory: str) -> str:
    """Writes `vocabulary.json` (ASCII JSON: every character round-trips)."""
    path = os.path.join(directory, VOCAB_FILE)
    payload = {'format': VOCAB_FORMAT, 'unk_token': UNK_TOKEN,
               'size': len(self.tokens), 'tokens': self.tokens}
    with tf.io.gfile.GFile(path, 'w') as f:
      f.write(json.dumps(payload, ensure_ascii=True, indent=0))
    return path

  @classmethod
  def load(cls, directory_or_file: str) -> 'CharVocab':
    path = directory_or_file
    if tf.io.gfile.isdir(path):
      path = os.path.join(path, VOCAB_FILE)
    with tf.io.gfile.GFile(path, 'r') as f:
      payload = json.loads(f.read())
    if payload.get('format') != VOCAB_FORMAT:
      raise ValueError(f'{path}: not a {VOCAB_FORMAT} file')
    return cls(payload['tokens'])


# ------------------------------------------------------------ corpus layout
def shard_name(index: int, num_shards: int) -> str:
  return f'corpus-{index:05d}-of-{num_shards:05d}.txt'


def write_corpus_index(directory: str, shards: List[Dict], fingerprint: str,
                       sources: Sequence[str]) -> None:
  index = {'num_chars': sum(s['num_chars'] for s in shards),
           'fingerprint': fingerprint, 'sources': list(sources), 'shards': shards}
  with tf.io.gfile.GFile(os.path.join(directory, CORPUS_INDEX_FILE), 'w') as f:
    f.write(json.dumps(index, indent=1))


def read_corpus_index(directory: str) -> Dict:
  with tf.io.gfile.GFile(os.path.join(directory, CORPUS_INDEX_FILE), 'r') as f:
    return json.loads(f.read())


def read_shard(directory: str, shard: Dict) -> str:
  """One shard's text, checked against the index: a truncated or corrupted shard is
  an error naming the file, never a corpus silently shorter than it says."""
  path = os.path.join(directory, shard['file'])
  with tf.io.gfile.GFile(path, 'rb') as f:
    data = f.read()
  if 'num_bytes' in shard and len(data) != shard['num_bytes']:
    raise ValueError(f'{path}: {len(data)} bytes, but the corpus index says '
                     f'{shard["num_bytes"]}: truncated or corrupted corpus shard')
  try:
    text = data.decode('utf-8')
  except UnicodeDecodeError as e:
    raise ValueError(f'{path}: not UTF-8 at byte {e.start}: corrupted corpus shard') from None
  if len(text) != shard['num_chars']:
    raise ValueError(f'{path}: {len(text)} characters, but the corpus index says '
                     f'{shard["num_chars"]}: corrupted corpus shard')
  return text


def iter_corpus_shards(directory: str) -> Iterator[str]:
  """Yields the corpus one shard at a time (memory bounded by the shard size)."""
  for shard in read_corpus_index(directory)['shards']:
    yield read_shard(directory, shard)
