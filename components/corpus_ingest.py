"""CorpusIngest: read text from files, globs, http(s) or gs:// into a typed Corpus.

Spec:
  parameters  sources (JSON list of str), source_fingerprint (str), seq_length,
              eval_fraction, shard_chars, unicode_normalization
  outputs     corpus: charrnn.Corpus

TFX's cache key sees only parameters and input artifacts, never the bytes behind
a path or URL. So the component computes `source_fingerprint` when the pipeline
is built (sha256 of local files, size+mtime of gs:// objects, ETag/Last-Modified
of URLs; `components/sources.py` has one entry per scheme): a changed corpus
changes a parameter and runs again, an unchanged one is served from cache.

It is a Beam pipeline (honouring the pipeline's `beam_pipeline_args`), so a
glob of 1,000 files or one 10 GB file ingests on as many workers as the runner
has, in two passes over independent units of work:

1. *Pieces.* One element per source, or per byte range of a source whose size
   is known (`_RANGE_BYTES` each). A range starts at the first *safe point* at
   or after its nominal offset: a UTF-8 character boundary, not just after a
   CR (CRLF -> LF stays whole), before a character where Unicode normalisation
   may cut the text (`components/normalization.py`: Hangul jamo and Indic vowel
   signs compose across starters too). Both neighbours compute the same point,
   so the ranges tile the file exactly, and normalising the pieces equals
   normalising the whole. Each piece is read in `_READ_BYTES` reads, decoded as
   strict UTF-8 (a BOM dropped at the start of a source), checked (errors carry
   the byte offset in the source), normalised with the same streaming-safe
   hold-back, and written to its own temporary file; its character count and
   any error go to a small JSON file beside it.
2. *Shards.* Knowing every piece's length, the driver cuts the concatenated
   text into shards of exactly `shard_chars` characters (the layout one
   sequential pass would write); one element per shard copies its character
   range out of the pieces. One more element computes the fingerprint: sha256
   is sequential, so it hashes the finished pieces' bytes in corpus order
   (their concatenation *is* the normalised text), while the shards are written.

Every problem is a `CorpusError` naming the source, and the first one in corpus
order is the one reported (as a sequential read would): pieces report errors as
data, the driver raises. Nothing is published on error: all work happens in a
temporary directory inside the output URI (the workers' shared filesystem);
shards and index.json are renamed into place only after the last check passed.
Results come back through files, never through Beam, so the Dask runner's
small set of transforms (Create, Map) is enough.
"""

import codecs
import hashlib
import json
import os
import time
import uuid
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Tuple

import apache_beam as beam
import tensorflow as tf
from tfx import types
from tfx.dsl.components.base import base_beam_component, base_beam_executor, executor_spec
from tfx.types import artifact_utils
from tfx.types.component_spec import ChannelParameter, ComponentSpec, ExecutionParameter

from components import code_version
from components import examples_format
from components import normalization as normalization_lib
from components import sources as sources_lib
from components import text as text_lib
from components.artifacts import Corpus
from components.sources import CorpusError  # pylint: disable=unused-import  (re-exported)

_READ_BYTES = 1 << 22          # 4 MiB per read: memory stays bounded
_RANGE_BYTES = 1 << 24         # 16 MiB per unit of parallel work in a large file
_SCAN_BYTES = 1 << 16          # how far past a range's nominal start to look for a safe point
_WORK_DIR = '.work'            # pieces and their metadata, inside the temporary directory


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
def expand_sources(sources: List[str]) -> List[str]:
  """Globs -> sorted matches; every other source stays as given."""
  return sources_lib.expand(sources)


def source_fingerprint(sources: List[str]) -> str:
  """Identifies the content behind `sources` without ingesting it.

  A source that cannot be examined yields a unique value, so the ingest step
  runs (and reports the problem) instead of hitting the cache.
  """
  digest = hashlib.sha256()
  try:
    for source in expand_sources(sources):
      digest.update(source.encode() + b'\0')
      sources_lib.scheme_of(source).fingerprint(source, digest)
  except Exception:  # pylint: disable=broad-except
    return f'unfingerprinted-{time.time_ns()}'
  return digest.hexdigest()


# ------------------------------------------------------------ pass 1: pieces
class _Piece(NamedTuple):
  """One unit of pass 1: a source, or the byte range of one starting near `nominal`."""
  index: int                    # position in the corpus
  source: str
  nominal: int                  # nominal start byte; 0 for a source's first piece
  following: Tuple[int, ...]    # nominal starts of the source's later pieces
  size: Optional[int]           # None: read to the end
  error: Optional[str] = None   # found while planning (a missing file, ...)


def _plan(expanded: List[str], range_bytes: int) -> List[List[_Piece]]:
  """Pieces per source, in corpus order."""
  plan, index = [], 0
  for source in expanded:
    try:
      size = sources_lib.scheme_of(source).size(source)
    except CorpusError as e:
      plan.append([_Piece(index, source, 0, (), None, str(e))])
      index += 1
      continue
    count = 1 if size is None else max(1, -(-size // range_bytes))
    starts = [k * range_bytes for k in range(count)]
    plan.append([_Piece(index + k, source, starts[k], tuple(starts[k + 1:]), size)
                 for k in range(count)])
    index += count
  return plan


def _utf8_length(lead: int) -> int:
  if lead < 0x80:
    return 1
  for n, mask, value in ((2, 0xE0, 0xC0), (3, 0xF0, 0xE0), (4, 0xF8, 0xF0)):
    if lead & mask == value:
      return n
  return 0                       # a continuation or an invalid byte


def _safe_point(piece: _Piece, nominal: int, form: str, scan_bytes: int) -> Optional[int]:
  """First offset in [nominal, nominal + scan_bytes) where the source may be cut, or None.

  A deterministic function of the bytes, so the pieces on both sides agree.
  Invalid bytes are never chosen; if the text is invalid there, the piece
  before reaches the error first and reports it.
  """
  with sources_lib.scheme_of(piece.source).open(piece.source, nominal - 1) as f:
    buf = f.read(scan_bytes + 4)
  for i in range(1, min(len(buf), scan_bytes + 1)):
    n = _utf8_length(buf[i])
    if n == 0 or buf[i - 1] == 0x0D or i + n > len(buf):
      continue
    try:
      char = buf[i:i + n].decode('utf-8')
    except UnicodeDecodeError:
      continue
    if normalization_lib.boundary_before(char, form):
      return nominal - 1 + i
  return None


def _piece_range(piece: _Piece, form: str, scan_bytes: int) -> Tuple[Optional[int], Optional[int]]:
  """[start, end) bytes of `piece`; start None: no safe point near it, the piece before reads on."""
  start = 0 if piece.nominal == 0 else _safe_point(piece, piece.nominal, form, scan_bytes)
  if start is None:
    return None, None
  for nominal in piece.following:
    end = _safe_point(piece, nominal, form, scan_bytes)
    if end is not None:
      return start, end
  return start, piece.size


def _decode(decoder, chunk: bytes, offset: int, source: str) -> str:
  """Strict UTF-8; the first problem in byte order (bad sequence or NUL) is the error."""
  nul = chunk.find(b'\0')
  buffered = len(decoder.getstate()[0])
  try:
    text = decoder.decode(chunk if nul < 0 else chunk[:nul + 1])
  except UnicodeDecodeError as e:
    raise CorpusError(f'{source}: invalid UTF-8 at byte offset {offset - buffered + e.start} '
                      f'({e.reason})') from None
  if nul >= 0:
    raise CorpusError(f'{source}: binary data, not text (NUL byte at byte offset {offset + nul})')
  return text


def _piece_paths(work_dir: str, index: int) -> Tuple[str, str]:
  base = os.path.join(work_dir, f'piece-{index:06d}')
  return base + '.txt', base + '.json'


def _write_atomically(path: str, write: Callable[[Any], None]) -> None:
  """Writes through a temporary sibling: a retried element never leaves half a file."""
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  with tf.io.gfile.GFile(tmp, 'wb') as f:
    f.write(b'')                  # GFile creates nothing until the first write
    write(f)
  tf.io.gfile.rename(tmp, path, overwrite=True)


def _stream_piece(piece: _Piece, start: int, end: Optional[int], form: str,
                  read_bytes: int, out) -> Tuple[int, int]:
  """Decodes, checks and normalises source bytes [start, end) into `out`: (chars, bytes)."""
  source = piece.source
  decoder = codecs.getincrementaldecoder('utf-8')('strict')
  normalizer = normalization_lib.StreamNormalizer(form)
  num_chars = num_bytes = 0
  offset = start              # source bytes handed to the decoder so far
  at_start = start == 0       # a BOM is encoding, not text
  with sources_lib.scheme_of(source).open(source, start) as f:

    def emit(text: str) -> None:
      nonlocal num_chars, num_bytes
      if text:
        data = text.encode('utf-8')
        out.write(data)
        num_chars += len(text)
        num_bytes += len(data)

    try:
      while end is None or offset < end:
        chunk = f.read(read_bytes if end is None else min(read_bytes, end - offset))
        if not chunk:
          break
        text = _decode(decoder, chunk, offset, source)
        offset += len(chunk)
        if at_start and text:
          text, at_start = text.removeprefix('\ufeff'), False
        emit(normalizer.feed(text))
      pending = len(decoder.getstate()[0])
      if pending:
        # A sequence cut by the end: the next bytes (from the next piece) say
        # what a whole-file read would report; at the end of the file it is truncated.
        after = f.read(4) if end is not None and end < (piece.size or 0) else b''
        try:
          decoder.decode(after, final=True)
        except UnicodeDecodeError as e:
          reason = e.reason if after else 'truncated multi-byte sequence at the end'
          raise CorpusError(f'{source}: invalid UTF-8 at byte offset '
                            f'{offset - pending + e.start} ({reason})') from None
      emit(normalizer.finish())
    except normalization_lib.NoBoundaryError as e:
      raise CorpusError(f'{source}: {e}, before byte offset {offset}') from None
  return num_chars, num_bytes


def _ingest_piece(piece: _Piece, work_dir: str, form: str, read_bytes: int,
                  scan_bytes: int) -> int:
  """Pass 1 for one piece: its normalised text and {num_chars, num_bytes, error}."""
  text_path, meta_path = _piece_paths(work_dir, piece.index)
  meta = {'num_chars': 0, 'num_bytes': 0, 'error': None}
  try:
    if piece.error:
      raise CorpusError(piece.error)
    start, end = _piece_range(piece, form, scan_bytes)
    counts = []
    _write_atomically(text_path, lambda out: counts.extend(
        _stream_piece(piece, start, end, form, read_bytes, out) if start is not None else (0, 0)))
    meta['num_chars'], meta['num_bytes'] = counts
  except CorpusError as e:
    meta['error'] = str(e)
  _write_atomically(meta_path, lambda f: f.write(json.dumps(meta).encode()))
  return piece.index


# ------------------------------------------------------------ pass 2: shards
class _ShardTask(NamedTuple):
  file: str                                       # final shard name
  segments: Tuple[Tuple[int, int, int, bool], ...]  # (piece, first char, end char, 1 byte/char)


def _read_chars(path: str, first: int, end: int, one_byte: bool,
                read_bytes: int) -> Iterator[bytes]:
  """UTF-8 bytes of characters [first, end) of a piece file, in bounded reads."""
  with tf.io.gfile.GFile(path, 'rb') as f:
    if one_byte:                  # ASCII-only piece: characters are bytes
      f.seek(first)
      left = end - first
      while left > 0:
        data = f.read(min(read_bytes, left))
        if not data:
          break
        left -= len(data)
        yield data
      return
    decoder = codecs.getincrementaldecoder('utf-8')('strict')
    position = 0                  # characters decoded so far
    while position < end and (data := f.read(read_bytes)):
      text = decoder.decode(data)
      lo, hi = max(first - position, 0), min(end - position, len(text))
      if lo < hi:
        yield text[lo:hi].encode('utf-8')
      position += len(text)


def _write_shard(task: _ShardTask, work_dir: str, out_dir: str, read_bytes: int) -> str:
  def write(out):
    for piece, first, end, one_byte in task.segments:
      for data in _read_chars(_piece_paths(work_dir, piece)[0], first, end, one_byte,
                              read_bytes):
        out.write(data)
  _write_atomically(os.path.join(out_dir, task.file), write)
  return task.file


def _fingerprint(pieces: List[int], work_dir: str, read_bytes: int) -> str:
  """sha256 of the normalised text: the pieces' bytes in corpus order."""
  digest = hashlib.sha256()
  for piece in pieces:
    with tf.io.gfile.GFile(_piece_paths(work_dir, piece)[0], 'rb') as f:
      while data := f.read(read_bytes):
        digest.update(data)
  _write_atomically(os.path.join(work_dir, 'fingerprint.json'),
                    lambda f: f.write(json.dumps(digest.hexdigest()).encode()))
  return 'fingerprint'


def _pass2(task, work_dir: str, out_dir: str, read_bytes: int) -> str:
  if isinstance(task, _ShardTask):
    return _write_shard(task, work_dir, out_dir, read_bytes)
  return _fingerprint(task, work_dir, read_bytes)


def _shard_tasks(lengths: List[Tuple[int, int, int]], shard_chars: int) -> List[_ShardTask]:
  """Cuts pieces of (index, num_chars, num_bytes) into shards of exactly shard_chars chars."""
  total = sum(n for _, n, _ in lengths)
  count = -(-total // shard_chars)
  tasks, i, used = [], 0, 0          # piece i, characters of it already in earlier shards
  for s in range(count):
    want, segments = min(shard_chars, total - s * shard_chars), []
    while want:
      index, num_chars, num_bytes = lengths[i]
      take = min(want, num_chars - used)
      if take:
        segments.append((index, used, used + take, num_chars == num_bytes))
      used += take
      want -= take
      if used == num_chars:
        i, used = i + 1, 0
    tasks.append(_ShardTask(text_lib.shard_name(s, count), tuple(segments)))
  return tasks


# ----------------------------------------------------------------- executor
def _default_pipeline() -> beam.Pipeline:
  return beam.Pipeline(argv=['--direct_running_mode=in_memory', '--direct_num_workers=1'])


def _run(make_pipeline: Callable[[], beam.Pipeline], label: str, elements: List[Any],
         fn: Callable[..., Any], **kwargs) -> None:
  with make_pipeline() as p:
    _ = (p
         | f'{label}Tasks' >> beam.Create(elements)
         | f'{label}Distribute' >> beam.Reshuffle()
         | label >> beam.Map(fn, **kwargs))


def ingest(sources: List[str], output_dir: str, seq_length: int,
           eval_fraction: float, shard_chars: int, normalization: str,
           make_pipeline: Optional[Callable[[], beam.Pipeline]] = None,
           range_bytes: Optional[int] = None) -> Tuple[int, str, List[Dict[str, Any]]]:
  """Writes the Corpus layout into `output_dir`; on any error leaves nothing behind.

  `make_pipeline` makes each pass's Beam pipeline (the executor's, with the
  pipeline's beam_pipeline_args; by default the in-memory DirectRunner);
  `range_bytes` is the size of a large file's units of work.
  """
  if not sources:
    raise CorpusError('no corpus sources given')
  if shard_chars < seq_length + 1:
    raise CorpusError(f'shard_chars ({shard_chars}) must be at least seq_length + 1')
  form = normalization_lib.check_form(normalization)
  make_pipeline = make_pipeline or _default_pipeline
  range_bytes = range_bytes or _RANGE_BYTES
  read_bytes = _READ_BYTES
  plan = _plan(expand_sources(sources), range_bytes)

  tmp_dir = os.path.join(output_dir, f'.tmp-{os.getpid()}-{time.time_ns()}')
  work_dir = os.path.join(tmp_dir, _WORK_DIR)
  tf.io.gfile.makedirs(work_dir)
  try:
    _run(make_pipeline, 'Pieces', [p for pieces in plan for p in pieces], _ingest_piece,
         work_dir=work_dir, form=form, read_bytes=read_bytes,
         scan_bytes=min(_SCAN_BYTES, range_bytes))
    lengths = []
    for pieces in plan:                     # the first error in corpus order wins
      before = len(lengths)
      for piece in pieces:
        with tf.io.gfile.GFile(_piece_paths(work_dir, piece.index)[1], 'r') as f:
          meta = json.loads(f.read())
        if meta['error']:
          raise CorpusError(meta['error'])
        if meta['num_chars']:
          lengths.append((piece.index, meta['num_chars'], meta['num_bytes']))
      if len(lengths) == before:
        raise CorpusError(f'{pieces[0].source}: empty file, no text')
    num_chars = sum(n for _, n, _ in lengths)
    needed = examples_format.min_corpus_chars(seq_length, eval_fraction)
    if num_chars < needed:
      raise CorpusError(
          f'{",".join(sources)}: corpus too small: {num_chars} characters, '
          f'need at least {needed} for one train and one eval window of '
          f'seq_length + 1 = {seq_length + 1} characters '
          f'(eval_fraction {eval_fraction})')

    tasks = _shard_tasks(lengths, shard_chars)
    _run(make_pipeline, 'Shards', [[index for index, _, _ in lengths]] + tasks, _pass2,
         work_dir=work_dir, out_dir=tmp_dir, read_bytes=read_bytes)
    with tf.io.gfile.GFile(os.path.join(work_dir, 'fingerprint.json'), 'r') as f:
      fingerprint = json.loads(f.read())
    shards = []
    for s, task in enumerate(tasks):
      size = tf.io.gfile.stat(os.path.join(tmp_dir, task.file)).length
      shards.append({'file': task.file,
                     'num_chars': min(shard_chars, num_chars - s * shard_chars),
                     'num_bytes': size})
    text_lib.write_corpus_index(tmp_dir, shards, fingerprint, sources)
    for name in [t.file for t in tasks] + [text_lib.CORPUS_INDEX_FILE]:
      tf.io.gfile.rename(os.path.join(tmp_dir, name), os.path.join(output_dir, name),
                         overwrite=True)
    return num_chars, fingerprint, shards
  finally:
    if tf.io.gfile.exists(tmp_dir):
      tf.io.gfile.rmtree(tmp_dir)


class Executor(base_beam_executor.BaseBeamExecutor):
  """Runs `ingest` with the pipeline's Beam runner."""

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
        normalization=exec_properties['unicode_normalization'],
        make_pipeline=self._make_beam_pipeline)
    corpus.set_int_custom_property('num_chars', num_chars)
    corpus.set_int_custom_property('num_shards', len(shards))
    corpus.set_string_custom_property('fingerprint', fingerprint)
    corpus.set_string_custom_property('sources', ','.join(sources))


# ---------------------------------------------------------------- component
class CorpusIngest(base_beam_component.BaseBeamComponent):
  """Ingests one or more text sources into a `charrnn.Corpus` artifact."""

  SPEC_CLASS = CorpusIngestSpec
  EXECUTOR_SPEC = executor_spec.BeamExecutorSpec(Executor)

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
