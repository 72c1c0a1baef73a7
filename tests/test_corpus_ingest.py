"""CorpusIngest: sources in, one normalised sharded Corpus out, or a clear error and nothing."""

import functools
import hashlib
import http.server
import os
import threading

import pytest
import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import v1 as tfx

from components import text as text_lib
from components.corpus_ingest import CorpusError, CorpusIngest, ingest, source_fingerprint
from components.examples_format import min_corpus_chars

SEQ, EVAL = 100, 0.1
BIG = min_corpus_chars(SEQ, EVAL)


def _text(n: int = BIG) -> str:
  line = 'To be, or not to be, that is the question:\n'
  return (line * (n // len(line) + 1))[:n]


def _ingest(sources, out, shard_chars=1_000_000, normalization='NFC'):
  return ingest([str(s) for s in sources], str(out), seq_length=SEQ, eval_fraction=EVAL,
                shard_chars=shard_chars, normalization=normalization)


def _read_all(out) -> str:
  return ''.join(text_lib.iter_corpus_shards(str(out)))


# --------------------------------------------------------------- good input
def test_local_file_becomes_sharded_corpus_with_count_and_fingerprint(tmp_path):
  src = tmp_path / 'a.txt'
  src.write_text(_text(2500), encoding='utf-8')
  out = tmp_path / 'out'
  out.mkdir()
  num_chars, fingerprint, shards = _ingest([src], out, shard_chars=1000)
  assert num_chars == 2500
  assert [s['num_chars'] for s in shards] == [1000, 1000, 500]
  assert sorted(os.listdir(out)) == ['corpus-00000-of-00003.txt', 'corpus-00001-of-00003.txt',
                                     'corpus-00002-of-00003.txt', 'index.json']
  assert _read_all(out) == _text(2500)
  assert fingerprint == hashlib.sha256(_text(2500).encode()).hexdigest()


def test_glob_and_several_sources_concatenate_in_order(tmp_path):
  for name, body in (('b.txt', 'B' * BIG), ('a.txt', 'A' * BIG), ('c.md', 'C' * BIG)):
    (tmp_path / name).write_text(body)
  out = tmp_path / 'out'
  out.mkdir()
  _ingest([tmp_path / '*.txt', tmp_path / 'c.md'], out)
  assert _read_all(out) == 'A' * BIG + 'B' * BIG + 'C' * BIG


def test_text_is_normalised_bom_crlf_and_nfc(tmp_path):
  src = tmp_path / 'a.txt'
  body = 'Cafe\u0301 line\r\nnext\r\n' + _text()
  src.write_bytes(b'\xef\xbb\xbf' + body.encode('utf-8'))
  out = tmp_path / 'out'
  out.mkdir()
  _ingest([src], out)
  assert _read_all(out) == 'Caf\u00e9 line\nnext\n' + _text()


def test_crlf_and_combining_marks_split_across_reads_are_normalised(tmp_path, monkeypatch):
  import components.corpus_ingest as ci
  monkeypatch.setattr(ci, '_READ_BYTES', 7)   # force many tiny reads
  src = tmp_path / 'a.txt'
  body = ('ab\r\ne\u0301\u0301x\r\n' * 40) + _text()
  src.write_bytes(body.encode('utf-8'))
  out = tmp_path / 'out'
  out.mkdir()
  _ingest([src], out)
  import unicodedata
  assert _read_all(out) == unicodedata.normalize('NFC', body.replace('\r\n', '\n'))


# Compositions of two starters (no combining mark in sight) and a CRLF, which the
# old rule (hold back combining marks only) broke when a read ended between them.
HANGUL, ORIYA = '\u1100\u1161\u11a8', '\u0b47\u0b3e'
TRICKY = 'x\u1100\u1161\u11a8 \u0b47\u0b3e e\u0301\u0323 \u00e9\r\n\U0001F600\u4e2d.'


def test_hangul_and_indic_compositions_across_the_read_boundary(tmp_path, monkeypatch):
  import unicodedata
  import components.corpus_ingest as ci
  for composing in (HANGUL, ORIYA):
    for split in range(1, len(composing)):
      head = 'ab' + composing[:split]
      monkeypatch.setattr(ci, '_READ_BYTES', len(head.encode()))   # the read ends mid-composition
      body = head + composing[split:] + _text()
      src = tmp_path / 'a.txt'
      src.write_bytes(body.encode('utf-8'))
      out = tmp_path / f'out-{len(composing)}-{split}'
      out.mkdir()
      _, fingerprint, _ = _ingest([src], out)
      expected = unicodedata.normalize('NFC', body)
      assert expected.startswith('ab' + unicodedata.normalize('NFC', composing))
      assert _read_all(out) == expected
      assert fingerprint == hashlib.sha256(expected.encode()).hexdigest()


@pytest.mark.parametrize('range_bytes', [5, 16, 61, 4096])
def test_byte_ranges_of_one_file_give_the_same_corpus_as_one_sequential_read(
    tmp_path, range_bytes):
  """Ranges cut at safe points: multi-byte UTF-8, CRLF, jamo and vowel signs stay whole."""
  import unicodedata
  body = '\ufeff' + TRICKY * 60 + _text()
  src = tmp_path / 'a.txt'
  src.write_bytes(body.encode('utf-8'))
  whole, ranged = tmp_path / 'whole', tmp_path / 'ranged'
  whole.mkdir()
  ranged.mkdir()
  expected = unicodedata.normalize('NFC', body[1:].replace('\r\n', '\n'))
  one = _ingest([src], whole, shard_chars=1000)
  many = ingest([str(src)], str(ranged), seq_length=SEQ, eval_fraction=EVAL, shard_chars=1000,
                normalization='NFC', range_bytes=range_bytes)
  assert one == many
  assert _read_all(ranged) == expected
  assert one[1] == hashlib.sha256(expected.encode()).hexdigest()
  assert {p.name: p.read_bytes() for p in whole.iterdir()} == \
      {p.name: p.read_bytes() for p in ranged.iterdir()}


def test_errors_in_a_byte_range_carry_the_offset_in_the_file(tmp_path):
  for data, pattern in (
      ((_text() + 'é' * 50).encode() + b'\xe2\x82(' + b'z' * 500, rf'invalid UTF-8 at byte offset {BIG + 100} \(invalid continuation byte\)'),
      (_text().encode() + b'A' * 77 + b'\0' + b'z' * 500, rf'NUL byte at byte offset {BIG + 77}'),
      ((_text() + 'é' * 50).encode() + b'\xe2\x82', rf'invalid UTF-8 at byte offset {BIG + 100} \(truncated')):
    src = tmp_path / 'bad.txt'
    src.write_bytes(data)
    for range_bytes in (7, 64, 1 << 20):
      out = tmp_path / f'out-{range_bytes}'
      out.mkdir(exist_ok=True)
      with pytest.raises(CorpusError, match=pattern):
        ingest([str(src)], str(out), seq_length=SEQ, eval_fraction=EVAL, shard_chars=1000,
               normalization='NFC', range_bytes=range_bytes)
      assert os.listdir(out) == []


def test_the_first_error_in_corpus_order_is_reported(tmp_path):
  (tmp_path / 'a.txt').write_bytes(b'A' * 10 + b'\xff')
  (tmp_path / 'b.txt').write_text(_text())
  out = tmp_path / 'out'
  out.mkdir()
  with pytest.raises(CorpusError, match=r'a\.txt: invalid UTF-8 at byte offset 10'):
    _ingest([tmp_path / 'b.txt', tmp_path / 'a.txt', tmp_path / 'missing.txt'], out)
  with pytest.raises(CorpusError, match=r'missing\.txt: no such file'):
    _ingest([tmp_path / 'b.txt', tmp_path / 'missing.txt', tmp_path / 'a.txt'], out)


def test_http_url_is_downloaded(tmp_path, http_dir):
  (http_dir / 'corpus.txt').write_text(_text())
  out = tmp_path / 'out'
  out.mkdir()
  _ingest([f'{http_dir.url}/corpus.txt'], out)
  assert _read_all(out) == _text()


def test_remote_filesystems_are_read_through_tf_io_gfile(tmp_path):
  """gs:// goes through tf.io.gfile; TF's in-memory ram:// filesystem takes the same path here."""
  for name in ('b.txt', 'a.txt'):
    with tf.io.gfile.GFile(f'ram://corpus-test/{name}', 'w') as f:
      f.write(name[0] * BIG)
  out = tmp_path / 'out'
  out.mkdir()
  _ingest(['ram://corpus-test/*.txt'], out)
  assert _read_all(out) == 'a' * BIG + 'b' * BIG
  assert not source_fingerprint(['ram://corpus-test/*.txt']).startswith('unfingerprinted')


def test_fingerprint_changes_with_content_and_only_then(tmp_path):
  src = tmp_path / 'a.txt'
  src.write_text(_text())
  first = source_fingerprint([str(src)])
  assert source_fingerprint([str(src)]) == first
  src.write_text(_text() + '!')
  assert source_fingerprint([str(src)]) != first
  # A missing source cannot be fingerprinted: never the same twice, never cached.
  missing = [str(tmp_path / 'missing.txt')]
  assert source_fingerprint(missing) != source_fingerprint(missing)


# ---------------------------------------------------------------- bad input
BAD_INPUTS = {
    'missing file': (lambda d, h: str(d / 'nope.txt'), r'nope\.txt: no such file'),
    'empty file': (lambda d, h: _write(d / 'empty.txt', b''), r'empty\.txt: empty file'),
    'invalid utf-8': (lambda d, h: _write(d / 'bad.txt', b'A' * 300 + b'\xff\xfe' + b'B' * 2000),
                      r'bad\.txt: invalid UTF-8 at byte offset 300'),
    'truncated utf-8': (lambda d, h: _write(d / 'cut.txt', _text().encode() + b'\xe2\x82'),
                        rf'cut\.txt: invalid UTF-8 at byte offset {BIG}'),
    'binary': (lambda d, h: _write(d / 'bin.dat', b'GIF89a' + b'\x00\x01' * 2000),
               r'bin\.dat: binary data, not text \(NUL byte at byte offset 6\)'),
    'too small': (lambda d, h: _write(d / 'small.txt', _text(BIG - 1).encode()),
                  rf'small\.txt: corpus too small: {BIG - 1} characters, need at least {BIG}'),
    'unmatched glob': (lambda d, h: str(d / 'none-*.txt'), r'none-\*\.txt: the glob matched no files'),
    'http 404': (lambda d, h: f'{h.url}/missing.txt', r'missing\.txt: unreachable URL \(HTTP 404'),
    'closed port': (lambda d, h: f'http://127.0.0.1:{_closed_port()}/c.txt',
                    r'c\.txt: unreachable URL \('),
}


def _write(path, data: bytes) -> str:
  path.write_bytes(data)
  return str(path)


def _closed_port() -> int:
  import socket
  s = socket.socket()
  s.bind(('127.0.0.1', 0))
  port = s.getsockname()[1]
  s.close()
  return port


@pytest.mark.parametrize('case', sorted(BAD_INPUTS))
def test_bad_input_raises_a_specific_error_and_leaves_no_files(case, tmp_path, http_dir):
  make, pattern = BAD_INPUTS[case]
  source = make(tmp_path, http_dir)
  out = tmp_path / 'out'
  out.mkdir()
  with pytest.raises(CorpusError, match=pattern):
    _ingest([source], out)
  assert os.listdir(out) == []


@pytest.mark.parametrize('case', ['invalid utf-8', 'too small'])
def test_bad_input_in_a_pipeline_fails_the_run_and_publishes_no_corpus(case, tmp_path, http_dir):
  make, pattern = BAD_INPUTS[case]
  source = make(tmp_path, http_dir)
  root = tmp_path / 'root'
  db = str(tmp_path / 'metadata.db')
  component = CorpusIngest(sources=[source], seq_length=SEQ, eval_fraction=EVAL,
                           shard_chars=1_000_000)
  p = tfx.dsl.Pipeline(
      pipeline_name='ingest-only', pipeline_root=str(root), components=[component],
      metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(db))
  with pytest.raises(Exception, match=pattern):
    tfx.orchestration.LocalDagRunner().run(p)
  store = metadata_store.MetadataStore(
      tfx.orchestration.metadata.sqlite_metadata_connection_config(db))
  assert store.get_artifacts_by_type('charrnn.Corpus') == []
  [execution] = store.get_executions()
  assert execution.last_known_state == metadata_store_pb2.Execution.FAILED
  leftovers = [os.path.join(d, f) for d, _, files in os.walk(root / 'CorpusIngest')
               for f in files]
  assert leftovers == []


# ------------------------------------------------------------------ fixtures
class _Quiet(http.server.SimpleHTTPRequestHandler):
  def log_message(self, *args):
    pass


@pytest.fixture
def http_dir(tmp_path):
  """A real HTTP server on loopback serving a temporary directory."""
  root = tmp_path / 'www'
  root.mkdir()
  server = http.server.ThreadingHTTPServer(
      ('127.0.0.1', 0), functools.partial(_Quiet, directory=str(root)))
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield _UrlDir(root, f'http://127.0.0.1:{server.server_address[1]}')
  server.shutdown()
  server.server_close()


class _UrlDir:
  """A directory and the URL it is served at; `/` joins paths like pathlib."""

  def __init__(self, path, url):
    self.path, self.url = path, url

  def __truediv__(self, name):
    return self.path / name
