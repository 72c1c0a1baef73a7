"""CorpusIngest: read text from files, globs, http(s) or gs:// into a typed Corpus.

Spec:
  parameters  sources (JSON list of str), source_fingerprint (str), seq_length,
              eval_fraction, shard_chars, unicode_normalization
  outputs     corpus: charrnn.Corpus

TFX's cache key sees only parameters and input artifacts, never the bytes behind
a path or URL. So the component computes `source_fingerprint` when the pipeline
is built (sha256 of local files, size+mtime of gs:// objects, ETag/Last-Modified
of URLs): a changed corpus changes a parameter and runs again, an unchanged one
is served from cache.

Every problem is a `CorpusError` naming the source, raised before anything is
published: text is streamed into a temporary directory inside the output URI,
which is renamed into place only after the last check passed.
"""

import codecs
import hashlib
import json
import os
import time
import unicodedata
import urllib.error
import urllib.request
from typing import Any, Dict, Iterator, List, Optional, Tuple

import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_component, base_executor, executor_spec
from tfx.types import artifact_utils
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import code_version
from components import examples_format
from components import text as text_lib
from components.artifacts import Corpus

_READ_BYTES = 1 << 22          # 4 MiB per read: memory stays bounded
_URL_TIMEOUT_S = 60


class CorpusError(ValueError):
  """A corpus source that cannot become a Corpus, with the source and the reason."""


# ---------------------------------------------------------------------- spec
class CorpusIngestSpec(ComponentSpec):
  PARAMETERS = {
      code_version.PARAMETER_NAME: code_version.PARAMETER,
      'sources': ExecutionParameter(type=str),            # JSON list
      'source_fingerprint': ExecutionParameter(type=str),
      'seq_length': ExecutionParameter(type=int),
      'eval_fraction': ExecutionParameter(type=float),
      'shard_chars': ExecutionParameter(type=int),
      'unicode_normalization': ExecutionParameter(type=str),
  }
  INPUTS = {}
  OUTPUTS = {'corpus': ChannelParameter(type=Corpus)}


# ------------------------------------------------------------------ sources
def _is_url(source: str) -> bool:
  return source.startswith(('http://', 'https://'))


def _has_glob(source: str) -> bool:
  return any(c in source for c in '*?[')


def expand_sources(sources: List[str]) -> List[str]:
  """Globs -> sorted matches; every other source stays as given."""
  expanded = []
  for source in sources:
    if not _is_url(source) and _has_glob(source):
      matches = sorted(tf.io.gfile.glob(source))
      if not matches:
        raise CorpusError(f'{source}: the glob matched no files')
      expanded.extend(matches)
    else:
      expanded.append(source)
  return expanded


def _open_url(url: str):
  try:
    return urllib.request.urlopen(url, timeout=_URL_TIMEOUT_S)
  except urllib.error.HTTPError as e:
    raise CorpusError(f'{url}: unreachable URL (HTTP {e.code} {e.reason})') from None
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, 'reason', e)
    raise CorpusError(f'{url}: unreachable URL ({reason})') from None


def _iter_bytes(source: str) -> Iterator[bytes]:
  if _is_url(source):
    with _open_url(source) as response:
      while chunk := response.read(_READ_BYTES):
        yield chunk
    return
  if not tf.io.gfile.exists(source):
    raise CorpusError(f'{source}: no such file')
  if tf.io.gfile.isdir(source):
    raise CorpusError(f'{source}: is a directory (use a glob such as {source}/*.txt)')
  with tf.io.gfile.GFile(source, 'rb') as f:
    while chunk := f.read(_READ_BYTES):
      yield chunk


def source_fingerprint(sources: List[str]) -> str:
  """Identifies the content behind `sources` without ingesting it.

  Local files are hashed (the only exact answer); remote objects use what the
  store reports. A source that cannot be examined yields a unique value, so the
  ingest step runs (and reports the problem) instead of hitting the cache.
  """
  digest = hashlib.sha256()
  try:
    for source in expand_sources(sources):
      digest.update(source.encode() + b'\0')
      if _is_url(source):
        request = urllib.request.Request(source, method='HEAD')
        with urllib.request.urlopen(request, timeout=_URL_TIMEOUT_S) as r:
          headers = [r.headers.get(h, '') for h in ('ETag', 'Last-Modified', 'Content-Length')]
        if not any(headers):
          raise CorpusError('no validator headers')
        digest.update('|'.join(headers).encode())
      elif source.startswith('/') or '://' not in source:
        with open(source, 'rb') as f:
          while chunk := f.read(_READ_BYTES):
            digest.update(chunk)
      else:
        stat = tf.io.gfile.stat(source)
        digest.update(f'{stat.length}|{stat.mtime_nsec}'.encode())
  except Exception:  # pylint: disable=broad-except
    return f'unfingerprinted-{time.time_ns()}'
  return digest.hexdigest()


# ----------------------------------------------------------------- executor
class _ShardWriter:
  """Writes normalised text into shards of at most `shard_chars` characters."""

  def __init__(self, directory: str, shard_chars: int):
    self._dir = directory
    self._limit = shard_chars
    self._shards: List[Dict[str, Any]] = []
    self._file = None
    self._count = 0
    self.sha256 = hashlib.sha256()
    self.num_chars = 0

  def write(self, text: str) -> None:
    while text:
      if self._file is None or self._count == self._limit:
        self._open_next()
      piece, text = text[:self._limit - self._count], text[self._limit - self._count:]
      data = piece.encode('utf-8')
      self._file.write(data)
      self.sha256.update(data)
      self._count += len(piece)
      self.num_chars += len(piece)
      self._shards[-1]['num_chars'] += len(piece)
      self._shards[-1]['num_bytes'] += len(data)

  def _open_next(self) -> None:
    self.close()
    self._shards.append({'file': f'part-{len(self._shards):05d}',
                         'num_chars': 0, 'num_bytes': 0})
    self._file = tf.io.gfile.GFile(os.path.join(self._dir, self._shards[-1]['file']), 'wb')
    self._count = 0

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def finish(self) -> List[Dict[str, Any]]:
    """Renames shards to corpus-NNNNN-of-MMMMM.txt now that the count is known."""
    self.close()
    for i, shard in enumerate(self._shards):
      final = text_lib.shard_name(i, len(self._shards))
      tf.io.gfile.rename(os.path.join(self._dir, shard['file']),
                         os.path.join(self._dir, final))
      shard['file'] = final
    return self._shards


def _decode_source(source: str, normalization: str) -> Iterator[str]:
  """Strict UTF-8 decoding with byte offsets in errors; NUL bytes are refused."""
  decoder = codecs.getincrementaldecoder('utf-8')('strict')
  offset = 0            # bytes of this source handed to the decoder so far
  first = True
  pending_cr = False
  carry = ''
  for chunk in _iter_bytes(source):
    nul = chunk.find(b'\0')
    if nul >= 0:
      raise CorpusError(f'{source}: binary data, not text (NUL byte at byte offset {offset + nul})')
    buffered = len(decoder.getstate()[0])
    try:
      piece = decoder.decode(chunk)
    except UnicodeDecodeError as e:
      raise CorpusError(
          f'{source}: invalid UTF-8 at byte offset {offset - buffered + e.start} '
          f'({e.reason})') from None
    offset += len(chunk)
    if first:
      piece = piece.removeprefix('\ufeff')   # a BOM is encoding, not text
      first = False
    # CRLF -> LF, even when the pair straddles two reads.
    if pending_cr:
      piece = '\r' + piece
    pending_cr = piece.endswith('\r')
    if pending_cr:
      piece = piece[:-1]
    piece = carry + piece.replace('\r\n', '\n')
    # Normalisation composes a starter with the combining marks after it, so
    # hold back the last starter and its marks until the next read.
    cut = len(piece)
    while cut > 0 and unicodedata.combining(piece[cut - 1]):
      cut -= 1
    cut = max(cut - 1, 0)
    piece, carry = piece[:cut], piece[cut:]
    if piece:
      yield unicodedata.normalize(normalization, piece) if normalization else piece
  try:
    tail = decoder.decode(b'', final=True)
  except UnicodeDecodeError as e:
    raise CorpusError(
        f'{source}: invalid UTF-8 at byte offset {offset - len(decoder.getstate()[0]) + e.start} '
        f'(truncated multi-byte sequence at the end)') from None
  tail = carry + ('\r' if pending_cr else '') + tail
  if tail:
    yield unicodedata.normalize(normalization, tail) if normalization else tail


class Executor(base_executor.BaseExecutor):
  """Streams every source into shards, checking as it goes."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]],
         exec_properties: Dict[str, Any]) -> None:
    corpus = artifact_utils.get_single_instance(output_dict['corpus'])
    sources = json.loads(exec_properties['sources'])
    num_chars, fingerprint, shards = ingest(
        sources, corpus.uri,
        seq_length=exec_properties['seq_length'],
        eval_fraction=exec_properties['eval_fraction'],
        shard_chars=exec_properties['shard_chars'],
        normalization=exec_properties['unicode_normalization'])
    corpus.set_int_custom_property('num_chars', num_chars)
    corpus.set_int_custom_property('num_shards', len(shards))
    corpus.set_string_custom_property('fingerprint', fingerprint)
    corpus.set_string_custom_property('sources', ','.join(sources))


def ingest(sources: List[str], output_dir: str, seq_length: int,
           eval_fraction: float, shard_chars: int,
           normalization: str) -> Tuple[int, str, List[Dict[str, Any]]]:
  """Writes the Corpus layout into `output_dir`; on any error leaves nothing behind."""
  if not sources:
    raise CorpusError('no corpus sources given')
  if shard_chars < seq_length + 1:
    raise CorpusError(f'shard_chars ({shard_chars}) must be at least seq_length + 1')
  tmp_dir = os.path.join(output_dir, f'.tmp-{os.getpid()}-{time.time_ns()}')
  tf.io.gfile.makedirs(tmp_dir)
  writer = _ShardWriter(tmp_dir, shard_chars)
  try:
    for source in expand_sources(sources):
      before = writer.num_chars
      for piece in _decode_source(source, normalization):
        writer.write(piece)
      if writer.num_chars == before:
        raise CorpusError(f'{source}: empty file, no text')
    shards = writer.finish()
    needed = examples_format.min_corpus_chars(seq_length, eval_fraction)
    if writer.num_chars < needed:
      raise CorpusError(
          f'{",".join(sources)}: corpus too small: {writer.num_chars} characters, '
          f'need at least {needed} for one train and one eval window of '
          f'seq_length + 1 = {seq_length + 1} characters '
          f'(eval_fraction {eval_fraction})')
    fingerprint = writer.sha256.hexdigest()
    text_lib.write_corpus_index(tmp_dir, shards, fingerprint, sources)
    for name in tf.io.gfile.listdir(tmp_dir):
      tf.io.gfile.rename(os.path.join(tmp_dir, name), os.path.join(output_dir, name),
                         overwrite=True)
    return writer.num_chars, fingerprint, shards
  finally:
    writer.close()
    if tf.io.gfile.exists(tmp_dir):
      tf.io.gfile.rmtree(tmp_dir)


# ---------------------------------------------------------------- component
class CorpusIngest(base_component.BaseComponent):
  """Ingests one or more text sources into a `charrnn.Corpus` artifact."""

  SPEC_CLASS = CorpusIngestSpec
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(Executor)

  def __init__(self, sources: List[str], seq_length: int, eval_fraction: float,
               shard_chars: int, unicode_normalization: str = 'NFC',
               fingerprint: Optional[str] = None):
    """`fingerprint` defaults to `source_fingerprint(sources)`, computed now."""
    if isinstance(sources, str):
      sources = [sources]
    spec = CorpusIngestSpec(
        code_version=code_version.fingerprint(__name__),
        sources=json.dumps(list(sources)),
        source_fingerprint=fingerprint or source_fingerprint(list(sources)),
        seq_length=seq_length,
        eval_fraction=eval_fraction,
        shard_chars=shard_chars,
        unicode_normalization=unicode_normalization,
        corpus=types.Channel(type=Corpus))
    super().__init__(spec=spec)
