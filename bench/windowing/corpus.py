"""A large synthetic UTF-8 corpus: Shakespeare's lines, shuffled and perturbed (seeded).

Lines of the real corpus are sampled with a seeded RNG; about one line in
eight gets a few characters swapped for non-ASCII ones (accented letters,
typographic punctuation, a few decomposed e + U+0301 that NFC composes), so
ingest's decoding and normalisation do real work. The vocabulary stays below
128 ids, WindowGen's fast serialisation path, as for any European-language text.
Written under /tmp, never committed.
"""

import os

import numpy as np

NON_ASCII = ['\u00e9', '\u00e8', '\u00ea', '\u00e0', '\u00e7', '\u00f1', '\u00fc', '\u00f6',
             '\u00df', '\u00e6', '\u2014', '\u2019', '\u201c', '\u201d', '\u2026']
DECOMPOSED_E_ACUTE = 'e\u0301'


def _pool(lines, rng, size=200_000):
  """Perturbed copies of the corpus' lines to sample from."""
  pool = []
  picks = rng.integers(0, len(lines), size)
  for i, idx in enumerate(picks):
    line = lines[idx]
    if line and rng.random() < 0.125:
      chars = list(line)
      for pos in rng.integers(0, len(chars), 1 + int(rng.integers(0, 3))):
        chars[pos] = (DECOMPOSED_E_ACUTE if rng.random() < 0.1
                      else NON_ASCII[int(rng.integers(0, len(NON_ASCII)))])
      line = ''.join(chars)
    pool.append(line + '\n')
  return pool


def generate(source: str, path: str, megabytes: float, seed: int = 0) -> int:
  """Writes about `megabytes` MB (10^6 bytes) of UTF-8 to `path`; returns the byte count."""
  target = int(megabytes * 1e6)
  if os.path.exists(path) and os.path.getsize(path) >= target:
    return os.path.getsize(path)
  rng = np.random.default_rng(seed)
  with open(source, encoding='utf-8') as f:
    lines = f.read().split('\n')
  pool = _pool(lines, rng)
  encoded = [s.encode('utf-8') for s in pool]
  written = 0
  tmp = f'{path}.tmp-{os.getpid()}'
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(tmp, 'wb') as f:
    while written < target:
      block = b''.join(encoded[i] for i in rng.integers(0, len(encoded), 50_000))
      block = block[:target - written] if written + len(block) > target else block
      f.write(block)
      written += len(block)
  # never end inside a multi-byte sequence
  with open(tmp, 'rb+') as f:
    f.seek(max(0, written - 4))
    tail = f.read()
    keep = len(tail)
    while keep and ((tail[keep - 1] & 0xC0) == 0x80 or tail[keep - 1] >= 0xC0):
      keep -= 1
    if keep != len(tail):
      f.truncate(written - len(tail) + keep)
  os.replace(tmp, path)
  return os.path.getsize(path)
