"""Corpus sources: one entry per scheme (local path, http(s), any tf.io.gfile filesystem).

Each `Scheme` says, for the sources it recognises, how to

* `expand` a glob into sorted matches,
* tell the `size` in bytes, or None when the source can only be read from the
  start (then it is one unit of work; with a size it can be cut into byte ranges
  that workers read in parallel),
* `open` it at a byte offset for reading,
* add what identifies its content to a `fingerprint` without ingesting it.

`SCHEMES` is tried in order; a new scheme (s3 through something other than
gfile, say) is one more entry. Every failure is a `CorpusError` naming the
source, with the wording the tests pin.

Fingerprints decide TFX's cache: local files are hashed (the only exact
answer), remote objects use what the store reports (size and mtime for
gfile filesystems such as gs://, ETag / Last-Modified / Content-Length for URLs).
"""

import dataclasses
import hashlib
import os
import urllib.error
import urllib.request
from typing import BinaryIO, Callable, List, Optional

import tensorflow as tf

URL_TIMEOUT_S = 60
_HASH_READ_BYTES = 1 << 22


class CorpusError(ValueError):
  """A corpus source that cannot become a Corpus, with the source and the reason."""


@dataclasses.dataclass(frozen=True)
class Scheme:
  name: str
  matches: Callable[[str], bool]
  expand: Callable[[str], List[str]]
  size: Callable[[str], Optional[int]]
  open: Callable[[str, int], BinaryIO]
  fingerprint: Callable[[str, 'hashlib._Hash'], None]


def _has_glob(source: str) -> bool:
  return any(c in source for c in '*?[')


def _glob(source: str) -> List[str]:
  if not _has_glob(source):
    return [source]
  matches = sorted(tf.io.gfile.glob(source))
  if not matches:
    raise CorpusError(f'{source}: the glob matched no files')
  return matches


# ---------------------------------------------------------------- http(s)
def _is_url(source: str) -> bool:
  return source.startswith(('http://', 'https://'))


def _open_url(url: str, offset: int = 0) -> BinaryIO:
  if offset:
    raise ValueError(f'{url}: URLs are read from the start only')
  try:
    return urllib.request.urlopen(url, timeout=URL_TIMEOUT_S)
  except urllib.error.HTTPError as e:
    raise CorpusError(f'{url}: unreachable URL (HTTP {e.code} {e.reason})') from None
  except (urllib.error.URLError, OSError) as e:
    reason = getattr(e, 'reason', e)
    raise CorpusError(f'{url}: unreachable URL ({reason})') from None


def _url_fingerprint(url: str, digest) -> None:
  request = urllib.request.Request(url, method='HEAD')
  with urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as r:
    headers = [r.headers.get(h, '') for h in ('ETag', 'Last-Modified', 'Content-Length')]
  if not any(headers):
    raise CorpusError(f'{url}: no validator headers')
  digest.update('|'.join(headers).encode())


URL = Scheme(
    name='http(s)', matches=_is_url,
    expand=lambda url: [url],            # no globbing over HTTP
    size=lambda url: None,               # one piece: not every server honours Range
    open=_open_url, fingerprint=_url_fingerprint)


# ------------------------------------------------- gfile (local, gs://, ...)
def _is_local(source: str) -> bool:
  return source.startswith('/') or '://' not in source


def _checked(source: str) -> None:
  if not tf.io.gfile.exists(source):
    raise CorpusError(f'{source}: no such file')
  if tf.io.gfile.isdir(source):
    raise CorpusError(f'{source}: is a directory (use a glob such as {source}/*.txt)')


def _local_size(path: str) -> int:
  _checked(path)
  return os.path.getsize(path)


def _local_open(path: str, offset: int = 0) -> BinaryIO:
  _checked(path)
  f = open(path, 'rb')  # pylint: disable=consider-using-with
  f.seek(offset)
  return f


def _local_fingerprint(path: str, digest) -> None:
  with open(path, 'rb') as f:
    while chunk := f.read(_HASH_READ_BYTES):
      digest.update(chunk)


def _gfile_size(source: str) -> int:
  _checked(source)
  return tf.io.gfile.stat(source).length


def _gfile_open(source: str, offset: int = 0) -> BinaryIO:
  _checked(source)
  f = tf.io.gfile.GFile(source, 'rb')
  if offset:
    f.seek(offset)
  return f


def _gfile_fingerprint(source: str, digest) -> None:
  stat = tf.io.gfile.stat(source)
  digest.update(f'{stat.length}|{stat.mtime_nsec}'.encode())


LOCAL = Scheme(name='local path', matches=_is_local, expand=_glob, size=_local_size,
               open=_local_open, fingerprint=_local_fingerprint)
# gs://, and whatever else TensorFlow's filesystems know (s3://, hdfs://, ram://).
GFILE = Scheme(name='tf.io.gfile filesystem', matches=lambda s: '://' in s, expand=_glob,
               size=_gfile_size, open=_gfile_open, fingerprint=_gfile_fingerprint)

SCHEMES = (URL, LOCAL, GFILE)


def scheme_of(source: str) -> Scheme:
  for scheme in SCHEMES:
    if scheme.matches(source):
      return scheme
  raise CorpusError(f'{source}: no corpus source scheme reads it')


def expand(sources: List[str]) -> List[str]:
  """Globs -> sorted matches; every other source stays as given."""
  expanded = []
  for source in sources:
    expanded.extend(scheme_of(source).expand(source))
  return expanded
