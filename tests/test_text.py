"""The one character <-> id mapping: tutorial-identical ids and a lossless file format."""

import json

import numpy as np
import pytest
import tensorflow as tf

from components import text as text_lib
from components.text import CharVocab, UNK_TOKEN

TRICKY = 'a\nb\r\n"quoted" \'single\' \\back\\ \t tab e\u0301 \U0001F600 \u00e9 \u4e2d \x7f'


def test_ids_equal_the_tutorials_string_lookup():
  text = open_corpus_sample()
  vocab = CharVocab.from_text(text)
  lookup = tf.keras.layers.StringLookup(vocabulary=sorted(set(text)), mask_token=None)
  assert lookup.get_vocabulary() == vocab.tokens
  chars = tf.strings.unicode_split(text, 'UTF-8')
  np.testing.assert_array_equal(lookup(chars).numpy(), vocab.encode(text))


def open_corpus_sample():
  from tests.conftest import CORPUS_PATH
  with open(CORPUS_PATH, encoding='utf-8') as f:
    return f.read(20000) + TRICKY


def test_vocabulary_starts_with_unk_then_characters_by_code_point():
  vocab = CharVocab.from_text('cab\U0001F600a')
  assert vocab.tokens == [UNK_TOKEN, 'a', 'b', 'c', '\U0001F600']


def test_saved_vocabulary_round_trips_every_character(tmp_path):
  vocab = CharVocab.from_text(TRICKY)
  vocab.save(str(tmp_path))
  raw = (tmp_path / 'vocabulary.json').read_bytes()
  raw.decode('ascii')   # pure ASCII on disk: no encoding can mangle it
  loaded = CharVocab.load(str(tmp_path))
  assert loaded == vocab
  assert loaded.decode(loaded.encode(TRICKY)) == TRICKY
  for ch in ('\n', '\r', '"', '\u0301', '\U0001F600'):
    assert ch in loaded.tokens


def test_unknown_characters_encode_to_unk():
  vocab = CharVocab.from_text('abc')
  np.testing.assert_array_equal(vocab.encode('a\U0001F600z'), [1, 0, 0])
  assert vocab.decode([1, 0]) == 'a' + UNK_TOKEN


def test_malformed_vocabulary_files_are_rejected(tmp_path):
  path = tmp_path / 'vocabulary.json'
  path.write_text(json.dumps({'format': 'something-else', 'tokens': []}))
  with pytest.raises(ValueError, match='not a charrnn.vocabulary/v1 file'):
    CharVocab.load(str(path))
  with pytest.raises(ValueError, match='sorted by code point'):
    CharVocab([UNK_TOKEN, 'b', 'a'])
  with pytest.raises(ValueError, match=r'must start with'):
    CharVocab(['a', 'b'])


def test_a_truncated_or_corrupted_corpus_shard_is_an_error_naming_the_file(tmp_path):
  text = 'Fair is foul, and foul is fair: à la mode\n' * 20
  data = text.encode('utf-8')
  (tmp_path / 'corpus-00000-of-00001.txt').write_bytes(data)
  shard = {'file': 'corpus-00000-of-00001.txt', 'num_chars': len(text), 'num_bytes': len(data)}
  assert text_lib.read_shard(str(tmp_path), shard) == text
  path = str(tmp_path / 'corpus-00000-of-00001.txt')
  (tmp_path / 'corpus-00000-of-00001.txt').write_bytes(data[:len(data) // 3])
  with pytest.raises(ValueError, match=f'{path}: .* bytes, but the corpus index says {len(data)}'):
    text_lib.read_shard(str(tmp_path), shard)
  # Same length, one byte flipped into invalid UTF-8.
  (tmp_path / 'corpus-00000-of-00001.txt').write_bytes(b'\xff' + data[1:])
  with pytest.raises(ValueError, match=f'{path}: not UTF-8 at byte 0'):
    text_lib.read_shard(str(tmp_path), shard)
  # An index without byte counts (older corpora) still checks the characters.
  (tmp_path / 'corpus-00000-of-00001.txt').write_bytes(data[:-1])
  with pytest.raises(ValueError, match='characters, but the corpus index says'):
    text_lib.read_shard(str(tmp_path), {'file': shard['file'], 'num_chars': len(text)})
