"""Streaming-safe Unicode normalisation: normalising pieces equals normalising the whole."""

import unicodedata

import pytest
from hypothesis import given, settings, strategies as st

from components.normalization import (FORMS, NoBoundaryError, StreamNormalizer,
                                      boundary_before, composition_seconds, normalize)

HANGUL = '\u1100\u1161\u11a8'          # L V T jamo -> U+AC01 (starters, no combining marks)
ORIYA = '\u0b47\u0b3e'                 # vowel sign E + AA -> U+0B4B (both starters)
# Characters whose normalisation interacts across neighbours, and plain ones.
TRICKY = ('a', 'e', 'E', ' ', '\n', '\r', '\u0301', '\u0323', '\u0344', '\u0f73', '\u1100',
          '\u1161', '\u11a8', '\uac00', '\u0b47', '\u0b3e', '\u0b4b', '\u0bc6', '\u0bbe',
          '\u00e9', '\ufb01', '\u2126', '\u212b', '\u0958', '\U0001F600', '\u4e2d', '\u0d4a',
          '\u1b05', '\u1b35', '\u0300', '\u0345', '\u05b4', '\u0e38', '\u0cc6', '\u0cd5')


def _pieces(text, cuts):
  cuts = sorted(set(c % (len(text) + 1) for c in cuts))
  return [text[i:j] for i, j in zip([0] + cuts, cuts + [len(text)])]


def _stream(form, pieces):
  normalizer = StreamNormalizer(form)
  return ''.join(normalizer.feed(p) for p in pieces) + normalizer.finish()


@pytest.mark.parametrize('form', FORMS)
@pytest.mark.parametrize('text', [HANGUL, ORIYA, 'e\u0301\u0323x', 'x\r\ny'])
def test_compositions_of_starters_and_crlf_survive_every_cut(form, text):
  text = 'ab' + text + 'cd'
  whole = unicodedata.normalize(form, text.replace('\r\n', '\n'))
  for cut in range(len(text) + 1):
    assert _stream(form, [text[:cut], text[cut:]]) == whole, (form, cut)


def test_the_old_rule_of_holding_back_only_combining_marks_was_not_enough():
  """Cut between Hangul L and V (or the two Oriya signs): piecewise NFC differs."""
  for text in (HANGUL, ORIYA):
    assert not any(unicodedata.combining(c) for c in text)
    assert unicodedata.normalize('NFC', text[:1]) + unicodedata.normalize('NFC', text[1:]) != \
        unicodedata.normalize('NFC', text)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(TRICKY), max_size=40),
       st.lists(st.integers(min_value=0, max_value=40), max_size=6),
       st.sampled_from(FORMS + ('',)))
def test_any_pieces_normalise_like_the_whole(text, cuts, form):
  expected = text.replace('\r\n', '\n')
  if form:
    expected = unicodedata.normalize(form, expected)
  assert _stream(form, _pieces(text, cuts)) == expected


def test_no_canonical_decomposition_lies_beyond_the_scanned_range():
  from components import normalization  # pylint: disable=g-import-not-at-top
  assert not [cp for cp in range(normalization._DECOMPOSITIONS_END, 0x110000)  # pylint: disable=protected-access
              if unicodedata.decomposition(chr(cp)) and
              not unicodedata.decomposition(chr(cp)).startswith('<')]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(TRICKY + ('\n', '\n', 'b', '\u00e9')), max_size=60),
       st.sampled_from(FORMS))
def test_normalising_only_the_lines_that_need_it_equals_normalising_everything(text, form):
  assert normalize(text, form) == unicodedata.normalize(form, text)


def test_boundaries_are_stable_starters_only():
  for c in 'a\n\u00e9\u4e2d\uac00\u1100':
    assert boundary_before(c, 'NFC'), repr(c)
  # Combining marks, composition seconds among starters, and characters NFC changes.
  for c in '\u0301\u1161\u11a8\u0b3e\u0f73\u2126\u0958':
    assert not boundary_before(c, 'NFC'), repr(c)
  assert {'\u1161', '\u11a8', '\u0b3e', '\u0bbe', '\u0cd5'} <= composition_seconds()


def test_every_boundary_character_really_is_a_cut_point_after_every_starter():
  """Exhaustively over the BMP: for each boundary character C and some characters X
  that compose with things, NFC(X + C) == NFC(X) + NFC(C)."""
  before = ['\u1100', '\uac00', '\u0b47', '\u0bc6', '\u0cc6', '\u0d46', 'e', '\u00e9',
            '\u1b05', '\u0dd9', '\u1025', '\U00011131', 'A\u0301']
  for cp in range(0x10000):
    c = chr(cp)
    if 0xD800 <= cp <= 0xDFFF or not boundary_before(c, 'NFC'):
      continue
    for x in before:
      assert unicodedata.normalize('NFC', x + c) == \
          unicodedata.normalize('NFC', x) + unicodedata.normalize('NFC', c), (x, hex(cp))


def test_an_endless_run_without_a_boundary_is_an_error_not_unbounded_memory():
  normalizer = StreamNormalizer('NFC', max_carry=1000)
  normalizer.feed('a' + '\u0301' * 600)
  with pytest.raises(NoBoundaryError, match='characters without a point'):
    normalizer.feed('\u0301' * 600)
