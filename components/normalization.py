"""Unicode normalisation of text that arrives in pieces: the pieces' result equals the whole's.

CorpusIngest reads a corpus in 4 MiB reads and, to ingest in parallel, in byte
ranges of one file. `unicodedata.normalize` of two pieces concatenated differs
from the normalisation of the whole when a composition straddles the cut: not
only a letter and the combining marks after it (e + U+0301 -> é), but also
pairs of *starters* (canonical combining class 0): Hangul jamo (U+1100 U+1161
U+11A8 -> U+AC01) and Indic vowel signs (U+0B47 U+0B3E -> U+0B4B).

The rule (UAX #15, "Detecting Normalization Forms" / safe points): the text
may be cut before a character C when nothing before C can interact with C or
anything after it. That holds when C

* has canonical combining class 0 (canonical reordering never crosses it),
* is unchanged by the normalisation form on its own (Quick_Check != No: its
  decomposition, if any, starts with a starter and it is not excluded), and
* is never the second character of a primary composition (Quick_Check !=
  Maybe: nothing before it can compose with it), which covers Hangul medial
  vowels and final consonants and the Indic/Sinhala/Balinese length marks.

Such a C is a *boundary*. `boundary_before(c, form)` answers for one
character; `StreamNormalizer` holds back everything from the last boundary of
what it has seen (and a trailing CR, so CRLF -> LF works across reads) until
more text or the end arrives. The same test picks where CorpusIngest may cut
a file into byte ranges.
"""

import functools
import unicodedata
from typing import FrozenSet

import numpy as np

FORMS = ('NFC', 'NFD', 'NFKC', 'NFKD')
# Hangul's compositions are algorithmic (no decomposition entry): L+V -> LV, LV+T -> LVT.
# Canonical decompositions exist only below U+2FA1E (the last CJK compatibility
# ideograph); tests/test_normalization.py checks the whole code space.
_DECOMPOSITIONS_END = 0x30000
_HANGUL_V = range(0x1161, 0x1175 + 1)
_HANGUL_T = range(0x11A8, 0x11C2 + 1)


class NoBoundaryError(ValueError):
  """More than `max_carry` characters arrived without a point where the text may be cut."""


def check_form(form: str) -> str:
  if form and form not in FORMS:
    raise ValueError(f'unknown Unicode normalisation {form!r}: one of {", ".join(FORMS)} or ""')
  return form


@functools.lru_cache(maxsize=None)
def composition_seconds() -> FrozenSet[str]:
  """Characters that are the second of some primary composite (NFC_Quick_Check = Maybe)."""
  seconds = {chr(c) for c in _HANGUL_V} | {chr(c) for c in _HANGUL_T}
  for cp in range(_DECOMPOSITIONS_END):
    decomposition = unicodedata.decomposition(chr(cp))
    if not decomposition or decomposition.startswith('<'):
      continue
    parts = decomposition.split()
    if len(parts) == 2:
      pair = chr(int(parts[0], 16)) + chr(int(parts[1], 16))
      if unicodedata.normalize('NFC', pair) == chr(cp):   # not a composition exclusion
        seconds.add(pair[1])
  return frozenset(seconds)


@functools.lru_cache(maxsize=65536)
def boundary_before(c: str, form: str) -> bool:
  """True when text may be cut just before `c` without changing its normalisation `form`.

  With no form ('') every character qualifies. Conservative for the
  decomposing forms (they would also allow composition seconds).
  """
  if not form:
    return True
  return (unicodedata.combining(c) == 0
          and unicodedata.normalize(form, c) == c
          and c not in composition_seconds())


@functools.lru_cache(maxsize=None)
def _unstable(form: str) -> np.ndarray:
  """A table over all code points: True for characters that are not a boundary for `form`.

  Only text around such characters can change under normalisation, so only the
  lines holding one are normalised.
  """
  candidates = set(composition_seconds())
  for cp in range(_DECOMPOSITIONS_END):
    c = chr(cp)
    if unicodedata.combining(c) or unicodedata.decomposition(c):
      candidates.add(c)
  if form in ('NFD', 'NFKD'):
    candidates.update(chr(cp) for cp in range(0xAC00, 0xD7A4))   # Hangul syllables decompose
  table = np.zeros(0x110000, dtype=bool)
  table[[ord(c) for c in candidates if not boundary_before(c, form)]] = True
  return table


def normalize(text: str, form: str) -> str:
  """unicodedata.normalize(form, text), fast on text that is mostly already normal.

  CPython's normalize() is slow (~10 MB/s) on any text its quick check cannot
  clear, and one decomposed accent anywhere is enough. So only the lines
  holding a non-boundary character (found with one numpy gather) are
  normalised; LF is a cut point on both sides (a boundary that composes with
  nothing after it) and the rest is copied as it is.
  """
  if not form or text.isascii():           # ASCII is in every normal form
    return text
  codes = np.frombuffer(text.encode('utf-32-le'), dtype='<u4')
  hits = np.flatnonzero(_unstable(form)[codes])
  if not len(hits):
    return text
  newlines = np.flatnonzero(codes == 0x0A)
  lines = np.unique(np.searchsorted(newlines, hits))   # line k ends at newlines[k]
  out, pos = [], 0
  for k in lines.tolist():
    lo = int(newlines[k - 1]) + 1 if k > 0 else 0
    hi = int(newlines[k]) if k < len(newlines) else len(text)
    out.append(text[pos:lo])
    out.append(unicodedata.normalize(form, text[lo:hi]))
    pos = hi
  out.append(text[pos:])
  return ''.join(out)


def last_boundary(text: str, form: str) -> int:
  """Index of the last character of `text` before which it may be cut; 0 if none."""
  for i in range(len(text) - 1, 0, -1):
    if boundary_before(text[i], form):
      return i
  return 0


class StreamNormalizer:
  """feed() pieces in order, then finish(): the outputs joined equal normalising the whole.

  Also turns CRLF into LF, a pair split over two pieces included. What it holds
  back is the text from the last boundary on, so memory stays bounded by the
  read size unless the text has no boundary for `max_carry` characters (a
  pathological run of combining marks), which is an error, not unbounded growth.
  """

  def __init__(self, form: str, max_carry: int = 1 << 20):
    self._form = check_form(form)
    self._max_carry = max_carry
    self._carry = ''

  def _normalize(self, text: str) -> str:
    return normalize(text, self._form)

  def feed(self, text: str) -> str:
    text = (self._carry + text).replace('\r\n', '\n')
    if not text:
      return ''
    if text[-1] == '\r':          # maybe the first half of a CRLF
      cut = len(text) - 1
    else:
      cut = last_boundary(text, self._form) if self._form else len(text)
    if cut == 0 and len(text) > self._max_carry:
      raise NoBoundaryError(
          f'{len(text)} characters without a point where {self._form} normalisation '
          f'may cut the text (e.g. an endless run of combining marks)')
    self._carry = text[cut:]
    return self._normalize(text[:cut])

  def finish(self) -> str:
    text, self._carry = self._carry, ''
    return self._normalize(text)
