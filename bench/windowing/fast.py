"""A candidate replacement for `components.window_gen._write_task`, measured by bench.windowing.

Same output contract (one GZIP TFRecord per (split, shard), same records, same
names, atomic rename); three changes, each measured on one 4M-character shard
on this machine (see README):
  1. GZIP level 1 instead of zlib's default 6: writing 0.30 s -> 0.09 s, files
     ~14% larger; readers are unchanged (still GZIP).
  2. The whole shard converted to uint8 bytes once, each record then a bytes
     slice appended to the constant prefix: 0.066 s -> 0.014 s.
  3. Only the `window - 1` characters the last window needs are taken from the
     next shard (the current code encodes the whole next shard).
"""

import os
import uuid
from typing import Any, Dict

import numpy as np
import tensorflow as tf

from components import text as text_lib
from components import window_gen

GZIP_LEVEL = 1


def write_task(task, corpus_uri: str, vocab_uri: str, output_uri: str,
               window: int, stride: int) -> Dict[str, Any]:
  index = text_lib.read_corpus_index(corpus_uri)
  shards = index['shards']
  offsets = np.cumsum([0] + [s['num_chars'] for s in shards])
  lo, hi = int(offsets[task.shard]), int(offsets[task.shard + 1])
  starts = window_gen.window_starts(task.region_start, task.region_end, window, stride, lo, hi)
  name = f'data_tfrecord-{task.shard:05d}-of-{len(shards):05d}.gz'
  path = os.path.join(output_uri, f'Split-{task.split}', name)
  vocab = text_lib.CharVocab.load(vocab_uri)
  serialize = window_gen.serialize_fn(window, len(vocab))
  tmp = f'{path}.tmp-{uuid.uuid4().hex}'
  options = tf.io.TFRecordOptions(compression_type='GZIP', compression_level=GZIP_LEVEL)
  with tf.io.TFRecordWriter(tmp, options=options) as writer:
    if len(starts):
      needed_end = starts[-1] + window
      pieces, end, i = [], lo, task.shard
      while end < needed_end:
        text = text_lib.read_shard(corpus_uri, shards[i])
        if i != task.shard:
          text = text[:needed_end - end]
        pieces.append(vocab.encode(text))
        end += shards[i]['num_chars']
        i += 1
      ids = np.concatenate(pieces)
      if len(vocab) <= 127:
        prefix = serialize(ids[:window])[:-window]
        data = ids.astype(np.uint8).tobytes()
        write = writer.write
        for start in starts:
          write(prefix + data[start - lo:start - lo + window])
      else:
        for start in starts:
          writer.write(serialize(ids[start - lo:start - lo + window]))
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return {'split': task.split, 'file': name, 'windows': len(starts)}
