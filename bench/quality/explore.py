"""Quick in-process training runs for choosing the `cpu` preset (not the pipeline).

  .venv/bin/python -m bench.quality.explore --tag NAME [--units 384 --lr 6e-3 --offsets 1 ...]

Same text, split, windows and eval as the pipeline (the first 90% of the corpus
trains; eval = WindowGen's windows of 101 ids every 100 over the last 10%, scored
from a zero state in float32 as the exported model computes), but no TFX, no
TFRecords, no per-epoch validation or samples: one variant in about 5.5 minutes.
Each run appends a row to bench/results/quality_explore.json and prints the table
of all rows. Differences under ~0.03 nats/char are within run-to-run noise on
this shared VM; the choice is confirmed through the pipeline with bench.quality.
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from bench import common
from components import model as model_lib
from components import examples_format
from components.text import CharVocab
from components.trainer_module import _Schedule

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(REPO, 'data', 'tinyshakespeare.txt')
RESULTS = os.path.join(common.RESULTS_DIR, 'quality_explore.json')


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--tag', required=True)
  p.add_argument('--units', type=int, default=512)
  p.add_argument('--emb', type=int, default=64)
  p.add_argument('--layers', type=int, default=1)
  p.add_argument('--rnn', default='gru')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--seq', type=int, default=100)
  p.add_argument('--lr', type=float, default=4e-3)
  p.add_argument('--min_ratio', type=float, default=0.1)
  p.add_argument('--schedule', default='cosine')
  p.add_argument('--seconds', type=float, default=300)
  p.add_argument('--offsets', type=int, default=0, help='1: a random offset every epoch')
  p.add_argument('--clipnorm', type=float, default=0)
  p.add_argument('--dropout', type=float, default=0)
  p.add_argument('--precision', default='mixed_bfloat16')
  p.add_argument('--seed', type=int, default=None)
  p.add_argument('--corpus', default=CORPUS)
  p.add_argument('--output', default=RESULTS, help='results JSON; rows are appended')
  a = p.parse_args()
  run = common.Run('quality_explore')
  if a.seed is not None:
    keras.utils.set_random_seed(a.seed)

  with open(a.corpus, encoding='utf-8') as f:
    text = f.read()
  # The pipeline's own vocabulary, split and eval windows (the gate's metric is
  # over windows of 100 + 1 ids, whatever --seq trains on).
  vocab = CharVocab.from_text(text)
  vocab_size = len(vocab)
  ids = vocab.encode(text).astype(np.int32)
  boundary = examples_format.split_boundary(len(ids), 0.1)
  train = ids[:boundary]
  eval_windows = np.stack([ids[s:s + 101] for s in examples_format.window_starts(
      boundary, len(ids), 101, 100, boundary, len(ids))])

  keras.mixed_precision.set_global_policy(a.precision)
  model = model_lib.build_keras_model(vocab_size, a.emb, a.rnn, a.units, a.layers, a.dropout)
  keras.mixed_precision.set_global_policy('float32')
  model.compile(optimizer=keras.optimizers.Adam(a.lr, clipnorm=a.clipnorm or None),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))

  rng = np.random.default_rng(a.seed)

  def batches():
    epoch = 0
    while True:
      offset = int(rng.integers(0, a.seq)) if a.offsets and epoch else 0
      starts = np.arange(offset, len(train) - a.seq, a.seq)
      windows = np.stack([train[s:s + a.seq + 1] for s in starts])
      rng.shuffle(windows)
      for i in range(0, len(windows) - a.batch + 1, a.batch):
        yield windows[i:i + a.batch, :-1], windows[i:i + a.batch, 1:]
      epoch += 1

  spec = tf.TensorSpec([a.batch, a.seq], tf.int32)
  ds = tf.data.Dataset.from_generator(batches, output_signature=(spec, spec)).prefetch(4)
  schedule = _Schedule(a.lr, a.schedule, a.min_ratio, None, a.seconds)
  started = time.monotonic()
  history = model.fit(ds, epochs=1000, steps_per_epoch=(len(train) - 1) // a.seq // a.batch,
                      callbacks=[schedule], verbose=0)
  train_seconds = time.monotonic() - started

  scorer = model_lib.build_keras_model(vocab_size, a.emb, a.rnn, a.units, a.layers, a.dropout)
  scorer.set_weights(model.get_weights())      # float32, as the exported model computes
  total = 0.0
  for i in range(0, len(eval_windows), 256):
    w = eval_windows[i:i + 256]
    total += float(tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(
        w[:, 1:], scorer(w[:, :-1], training=False))))
  row = {'tag': a.tag, 'date': run.started.isoformat(timespec='seconds'), 'eval_loss': total / (len(eval_windows) * 100),
         'train_seconds': train_seconds, 'steps': schedule._step,  # pylint: disable=protected-access
         'epochs': len(history.epoch), 'last_train_loss': history.history['loss'][-1],
         'load_end': common.loadavg()[0],
         'settings': {k: v for k, v in vars(a).items() if k not in ('tag', 'corpus')}}
  rows = []
  if os.path.exists(a.output):
    with open(a.output) as f:
      rows = json.load(f)['results']
  rows.append(row)
  run.write({'results': rows}, a.output)
  print(common.table([{k: v for k, v in r.items() if k != 'settings'} for r in rows],
                     ['tag', 'eval_loss', 'train_seconds', 'steps', 'epochs', 'last_train_loss',
                      'load_end']))


if __name__ == '__main__':
  sys.exit(main())
