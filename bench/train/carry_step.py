"""Step time of training with carried state (components/tbptt.py) vs today's step.

  .venv/bin/python -m bench.train.carry_step [--units 384 --steps 12]

Carried state should cost nothing per step: the same matmuls, one more state
input and one variable assign. This times `train_on_batch` of the plain model
(the `cpu` preset's step) and of `CarriedStateTrainer` on the same batches,
alternating one step each so the shared machine's load hits both alike, after
one untimed (tracing) step each. Writes bench/results/carry_step.json.
"""

import argparse
import sys
import time

import keras
import numpy as np

from bench import common
from components import tbptt, training
from components import model as model_lib


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--units', type=int, default=384)
  p.add_argument('--emb', type=int, default=64)
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--seq', type=int, default=100)
  p.add_argument('--steps', type=int, default=12)
  p.add_argument('--precision', default='auto')
  a = p.parse_args()
  run = common.Run('carry_step')
  precision = training.resolve_precision(a.precision)
  vocab = 66
  rng = np.random.default_rng(0)

  def compiled(model):
    model.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=1.0),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model

  keras.mixed_precision.set_global_policy(precision)
  plain = compiled(model_lib.build_keras_model(vocab, a.emb, 'gru', a.units, 1, 0.0))
  carried_model = model_lib.build_keras_model(vocab, a.emb, 'gru', a.units, 1, 0.0)
  keras.mixed_precision.set_global_policy('float32')
  carried = compiled(tbptt.CarriedStateTrainer(carried_model, a.batch))

  def batch():
    ids = rng.integers(1, vocab, (a.batch, a.seq + 1)).astype(np.int32)
    return ids[:, :-1], ids[:, 1:]

  times = {'plain': [], 'carried': []}
  for i in range(a.steps + 1):
    x, y = batch()
    for name in ('plain', 'carried') if i % 2 else ('carried', 'plain'):
      inputs = x if name == 'plain' else {'ids': x, 'carry': np.ones(a.batch, np.float32)}
      trainer = plain if name == 'plain' else carried
      started = time.monotonic()
      trainer.train_on_batch(inputs, y)
      if i:
        times[name].append(time.monotonic() - started)
  rows = [{'step': name, 'ms_per_step_median': round(1000 * float(np.median(t)), 1),
           'ms_per_step_mean': round(1000 * float(np.mean(t)), 1), 'steps': len(t)}
          for name, t in times.items()]
  ratio = rows[1]['ms_per_step_median'] / rows[0]['ms_per_step_median']
  run.write({'results': rows, 'carried_over_plain': round(ratio, 3), 'precision': precision,
             'settings': vars(a)})
  print(common.table(rows, ['step', 'ms_per_step_median', 'ms_per_step_mean', 'steps']))
  print(f'carried / plain: {ratio:.3f} ({precision}, load {common.loadavg()})')


if __name__ == '__main__':
  sys.exit(main())
