"""Quick in-process training runs for choosing the `cpu` preset (not the pipeline):
several variants ("arms") trained side by side, interleaved, in one process.

  .venv/bin/python -m bench.quality.explore --arms base,carry,carry_seq50 --seconds 150
  .venv/bin/python -m bench.quality.explore --arms base,carry --steps 300
  .venv/bin/python -m bench.quality.explore --arms base --arm u512=units:512,lr:0.006 ...

Same text, split, windows and eval as the pipeline (the first 90% of the corpus
trains; eval = WindowGen's windows of 101 ids every 100 over the last 10%, scored
from a zero state in float32 as the exported model computes: the gate's number),
but no TFX, no TFRecords, no per-epoch validation or samples.

Arms take turns: each trains for `--segment` seconds, then the next, so a change
in the shared machine's load hits every arm alike. Each arm stops at its own
budget: `--seconds` of its own training time (equal wall time: what a user
waiting for the preset gets) or `--steps` (equal steps: quality per update,
independent of the load); its learning-rate schedule runs over that budget.
ms/step leaves out each arm's first step (tracing).

The levers (issue 13, item 4):
  base      the `cpu` preset as it trains today: windows re-cut at random offsets,
            shuffled, each from a zero state;
  carry     truncated BPTT (components/tbptt.py): 64 parallel streams through
            the text, each batch starting from the state the previous one ended
            in, so a step sees context from far back at no extra cost;
  ..._seqN  the same with N-character windows (shorter: more updates per
            second with the context still carried);
  reset     carried state with rows reset at random, so the model also meets
            the zero state the gate and every generate() start from.
Any arm may also change a setting (`--arm name=key:value,...`: units, lr, layers,
dropout, batch, seq, beta2 (Adam's), wd (AdamW's weight decay), seed (data order and
initial weights), ...), and `--ema` scores averages of every arm's weights beside its
trained weights: a paired comparison, free of the run-to-run noise.
Besides the gate's zero-state loss, `eval_loss_warm` scores (nearly) the same
windows in text order with the state carried from window to window (16 streams):
what a model with context achieves, reported apart, never as the gate's number.

Measured (quality_explore.json, tags T150_, T150b_, S300_; 2-core AMD EPYC without
AVX512, float32, under load 5-13 from other engineers' runs, 2026-12-01):
carried state does not beat the re-cut windows on the gate's zero-state eval at
these budgets (0.5-2 epochs): it lowers the training loss (its rows see context)
and ties with warm state, but scores 0.03-0.04 worse from a zero state at equal
steps (GRU-384, 300 steps: 1.732 vs 1.692; warm 1.677 vs 1.666).
What wins at this load's step time (0.9-1.7 s) is a cheaper step: GRU-256 or
seq 50 beat GRU-384 by 0.15-0.18 nats/char in equal time, the opposite of the
unloaded AVX512-BF16 rows (G/H/I: 1,200-2,300 steps, GRU-384 ahead by 0.02): the
best size depends on how many steps the budget buys on the machine.

On Zen 5 (AVX512-BF16, bf16, 2026-12-02, rows Z5eq3_-Z5eq5_, S800ema_, S800avg_): the
seed alone moves GRU-384's score by ~0.01 (1.514 / 1.518 / 1.524); Adam's beta_2 at
0.99 / 0.95 trains lower and scores worse (1.524 / 1.519 vs 1.510); two layers of
GRU-256 1.516. A moving average of the weights from the first step (momentum 0.998)
scored 0.014-0.021 better than the trained weights at ~1,500 steps in all 5 runs, but
0.14 worse at 800 steps, and averages started late gained at most 0.008: the gain is
the ~5% of the initial weights the average still holds (a shrinkage), not averaging.
What that points to, AdamW's weight decay, won where the steps are many and cost
nothing where they are few: wd 0.1 1.498 vs Adam's 1.512 at ~1,250 steps (0.03:
1.504), 1.5248 vs 1.5249 at 800 (rows Z5eq6_, S800wd_): the `cpu` preset took 0.1.
On Zen 3 (float32, rows Z3wd_), 1,000 steps of GRU-256, the size and step count the
pipeline gets there on a slow day: 0.1 1.5256, 0.3 1.5367, Adam 1.5407.

Each run appends one row per arm to bench/results/quality_explore.json, with the
machine and the load, and prints the table of this run's rows. Differences
under ~0.03 nats/char are within run-to-run noise on this shared VM.
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
from components import examples_format, tbptt, training
from components import model as model_lib
from components.text import CharVocab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(REPO, 'data', 'tinyshakespeare.txt')
RESULTS = os.path.join(common.RESULTS_DIR, 'quality_explore.json')

# Each arm is a set of changes to the command line's settings (the `cpu` preset's).
ARMS = {
    'base': {},
    'carry': {'carry': 1},
    'reset': {'carry': 1, 'reset_prob': 0.05},
    'carry_seq50': {'carry': 1, 'seq': 50},
    'carry_seq200': {'carry': 1, 'seq': 200},
    'carry_u512': {'carry': 1, 'units': 512, 'lr': 6e-3},
    'carry_u256': {'carry': 1, 'units': 256, 'lr': 1e-2},
    'base_u256': {'units': 256, 'lr': 1e-2},
    # bench.quality's peer (the tutorial's recipe at GRU-256): Adam 5e-3 constant,
    # no clipping, float32, embedding 256, re-cut windows.
    'peer': {'emb': 256, 'units': 256, 'lr': 5e-3, 'schedule': 'constant', 'clipnorm': 0.0,
             'precision': 'float32'},
    # Shorter windows in bigger batches: the same characters per step, half the
    # sequential timesteps, matmuls twice as tall.
    'b128_seq50': {'batch': 128, 'seq': 50},
}
EVAL_WINDOW = 101     # the gate scores WindowGen's windows of 100 + 1 ids
WARM_STREAMS = 16


class Arm:
  """One variant: its model, its data stream, its budget and its clock."""

  def __init__(self, name, s, vocab_size, train, budget_steps, budget_seconds,
               ema_specs=()):
    self.name, self.s = name, s
    # An arm's own `steps` (e.g. its step count in equal quiet time) wins.
    self.budget_steps = int(getattr(s, 'steps', 0) or budget_steps)
    self.budget_seconds = budget_seconds
    keras.mixed_precision.set_global_policy(s.precision)
    self.model = model_lib.build_keras_model(vocab_size, s.emb, s.rnn, s.units, s.layers,
                                             s.dropout)
    keras.mixed_precision.set_global_policy('float32')
    self.trainer = tbptt.CarriedStateTrainer(self.model, s.batch) if s.carry else self.model
    self.trainer.compile(optimizer=model_lib.build_optimizer(s.lr, s.clipnorm, s.wd, s.beta2),
                         loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if s.carry:
      self.batches = iter(tbptt.stream_dataset(train, s.seq, s.batch, s.reset_prob, s.seed))
      self.steps_per_epoch = tbptt.steps_per_epoch(len(train), s.seq, s.batch)
    else:
      self.batches = self._recut(train)
      self.steps_per_epoch = (len(train) - 1) // s.seq // s.batch
    self.steps, self.seconds, self.losses = 0, 0.0, []
    # Averages of the weights (Polyak averaging), one per `--ema` spec: scored
    # beside the trained weights of the same run, so the comparison carries none
    # of the run-to-run noise. A spec is MOMENTUM (an exponential moving average
    # from the first step, as Keras' use_ema), MOMENTUM@P (the same, started when
    # the arm's budget is P spent) or uniform@P (the plain mean from P on).
    self.ema_specs = list(ema_specs)
    self.ema = [[tf.Variable(w, trainable=False) for w in self.model.trainable_weights]
                for _ in self.ema_specs]
    self.ema_counts = [0] * len(self.ema_specs)
    self._update_ema = tf.function(self._ema_step)

  def _ema_step(self, shadows, momentum):
    for shadow, w in zip(shadows, self.model.trainable_weights):
      shadow.assign(momentum * shadow + (1.0 - momentum) * tf.cast(w, shadow.dtype))

  def update_averages(self):
    progress = self.progress()
    for i, (spec, shadows) in enumerate(zip(self.ema_specs, self.ema)):
      kind, _, start = spec.partition('@')
      if progress < float(start or 0):
        continue
      count = self.ema_counts[i]
      # The first averaged step copies the weights: no initial weights in the mean.
      momentum = 0.0 if count == 0 else (count / (count + 1) if kind == 'uniform'
                                         else float(kind))
      self._update_ema(shadows, tf.constant(momentum, tf.float32))
      self.ema_counts[i] += 1

  def _recut(self, train):
    """make_dataset's random_offsets: every window cut at its own random offset, shuffled."""
    rng = np.random.default_rng(self.s.seed)
    seq, batch = self.s.seq, self.s.batch
    while True:
      starts = np.arange(0, len(train) - 2 * seq - 1, seq) + rng.integers(
          0, seq, (len(train) - 2 * seq - 1 + seq - 1) // seq)
      rng.shuffle(starts)
      for i in range(0, len(starts) - batch + 1, batch):
        windows = train[starts[i:i + batch, None] + np.arange(seq + 1)]
        yield windows[:, :-1], windows[:, 1:]

  def progress(self):
    if self.budget_steps:
      return self.steps / self.budget_steps
    return self.seconds / self.budget_seconds

  def done(self):
    return self.progress() >= 1.0

  def step(self):
    s = self.s
    self.trainer.optimizer.learning_rate.assign(
        training.learning_rate(s.lr, s.schedule, s.min_ratio, self.progress()))
    x, y = next(self.batches)
    self.trainer.reset_metrics()    # train_on_batch's loss is otherwise a running mean
    started = time.monotonic()
    loss = self.trainer.train_on_batch(x, y, return_dict=True)['loss']
    if self.ema:
      self.update_averages()
    if self.steps:    # the first step traces: not the model's speed
      self.seconds += time.monotonic() - started
    self.steps += 1
    self.losses.append(float(loss))


def eval_losses(arm, vocab_size, eval_windows, precision, trainable_weights=None):
  """(zero-state loss over all eval windows, zero-state and carried-state loss over
  the windows WARM_STREAMS streams cover), in float32 as the export computes; of
  the arm's model, or of it with `trainable_weights` (an EMA) in their place."""
  s = arm.s
  scorer = arm.model
  if precision != 'float32' or trainable_weights is not None:
    scorer = model_lib.build_keras_model(vocab_size, s.emb, s.rnn, s.units, s.layers, s.dropout)
    scorer.set_weights(arm.model.get_weights())
    for target, value in zip(scorer.trainable_weights, trainable_weights or []):
      target.assign(tf.cast(value, target.dtype))
  state_io = model_lib.with_state_io(scorer)
  size = state_io.inputs[1].shape[1]
  # Traced once: eagerly, Keras' RNN loop runs step by step in Python.
  forward = tf.function(lambda x: scorer(x, training=False), reduce_retracing=True)
  carried = tf.function(lambda x, states: state_io([x, states], training=False))

  def xent(windows, logits):
    return tf.nn.sparse_softmax_cross_entropy_with_logits(windows[:, 1:], logits).numpy()

  zero = np.concatenate([xent(w, forward(tf.constant(w[:, :-1])))
                         for w in np.array_split(eval_windows, max(1, len(eval_windows) // 256))])
  # Windows tile the eval text: stream b reads windows b*L .. b*L + L - 1 in order.
  length = len(eval_windows) // WARM_STREAMS
  streams = eval_windows[:WARM_STREAMS * length].reshape(WARM_STREAMS, length, EVAL_WINDOW)
  states, warm = tf.zeros([WARM_STREAMS, size]), []
  for t in range(length):
    logits, states = carried(tf.constant(streams[:, t, :-1]), states)
    warm.append(xent(streams[:, t], logits))
  return float(zero.mean()), float(zero[:WARM_STREAMS * length].mean()), float(np.mean(warm))


def parse_arm(text):
  """'name=key:value,key:value' -> (name, changes) for an arm not in ARMS."""
  name, _, spec = text.partition('=')
  changes = {}
  for item in filter(None, spec.split(',')):
    key, _, value = item.partition(':')
    try:
      changes[key] = float(value) if '.' in value or 'e' in value else int(value)
    except ValueError:
      changes[key] = value          # schedule:constant, precision:float32
  return name, changes


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--arms', default='base,carry', help=f'comma-separated, of {sorted(ARMS)}')
  p.add_argument('--arm', action='append', default=[], help='name=key:value,... (another arm)')
  p.add_argument('--tag', default='', help='prefix of this run\'s row tags')
  p.add_argument('--seconds', type=float, default=150, help='each arm\'s own training time')
  p.add_argument('--steps', type=int, default=0, help='equal steps instead of equal time')
  p.add_argument('--segment', type=float, default=5.0, help='seconds per turn')
  # The `cpu` preset's settings (pipeline/configs.py), what every arm changes.
  p.add_argument('--units', type=int, default=384)
  p.add_argument('--emb', type=int, default=64)
  p.add_argument('--layers', type=int, default=1)
  p.add_argument('--rnn', default='gru')
  p.add_argument('--batch', type=int, default=64)
  p.add_argument('--seq', type=int, default=100)
  p.add_argument('--lr', type=float, default=8e-3)
  p.add_argument('--min_ratio', type=float, default=0.02)
  p.add_argument('--schedule', default='cosine')
  p.add_argument('--clipnorm', type=float, default=1.0)
  p.add_argument('--dropout', type=float, default=0)
  # Adam's second-moment decay (Keras' default): nanoGPT's character-level
  # Shakespeare lowers it to 0.99 for runs of a few thousand small steps.
  p.add_argument('--beta2', type=float, default=0.999)
  p.add_argument('--wd', type=float, default=0.0, help='AdamW\'s weight decay (0: Adam)')
  p.add_argument('--carry', type=int, default=0, help='1: truncated BPTT (carried state)')
  p.add_argument('--reset_prob', type=float, default=0.0)
  p.add_argument('--precision', default='auto')
  p.add_argument('--seed', type=int, default=1)
  p.add_argument('--ema', default='', help='comma-separated averages of the weights each arm '
                 'also scores (eval_loss_ema): MOMENTUM, MOMENTUM@PROGRESS or uniform@PROGRESS')
  p.add_argument('--corpus', default=CORPUS)
  p.add_argument('--output', default=RESULTS, help='results JSON; rows are appended')
  a = p.parse_args()
  run = common.Run('quality_explore')
  machine = common.machine()
  precision = training.resolve_precision(a.precision)

  with open(a.corpus, encoding='utf-8') as f:
    text = f.read()
  vocab = CharVocab.from_text(text)
  ids = vocab.encode(text).astype(np.int32)
  boundary = examples_format.split_boundary(len(ids), 0.1)
  train = ids[:boundary]
  eval_windows = np.stack([ids[s:s + EVAL_WINDOW] for s in examples_format.window_starts(
      boundary, len(ids), EVAL_WINDOW, EVAL_WINDOW - 1, boundary, len(ids))])

  arms = dict(ARMS)
  arms.update(parse_arm(t) for t in a.arm)
  names = [n for n in a.arms.split(',') if n] + [parse_arm(t)[0] for t in a.arm]
  base = {k: v for k, v in vars(a).items()
          if k not in ('arms', 'arm', 'tag', 'seconds', 'steps', 'segment', 'corpus', 'output',
                       'ema')}
  ema_specs = [m for m in a.ema.split(',') if m]
  built = []
  for name in names:
    settings = argparse.Namespace(**{**base, 'precision': precision, **arms[name]})
    # The same initial weights where shapes agree, unless the arm sets its own seed.
    keras.utils.set_random_seed(settings.seed)
    built.append(Arm(name, settings, len(vocab), train, a.steps, a.seconds, ema_specs))

  # Turns, rotating who goes first so no arm always follows the same neighbour.
  turn = 0
  while not all(arm.done() for arm in built):
    order = built[turn % len(built):] + built[:turn % len(built)]
    for arm in order:
      started = time.monotonic()
      while not arm.done() and time.monotonic() - started < a.segment:
        arm.step()
    turn += 1
    print(' '.join(f'{arm.name}:{arm.steps}/{np.mean(arm.losses[-20:]):.3f}' for arm in built),
          f'load {common.loadavg()[0]}', flush=True)

  rows = []
  for arm in built:
    zero, zero_covered, warm = eval_losses(arm, len(vocab), eval_windows, arm.s.precision)
    ema = {spec: eval_losses(arm, len(vocab), eval_windows, arm.s.precision, shadows)[0]
           for spec, shadows in zip(arm.ema_specs, arm.ema)}
    rows.append({
        'tag': a.tag + arm.name, 'date': run.started.isoformat(timespec='seconds'),
        'mode': f'equal steps ({a.steps})' if a.steps else f'equal time ({a.seconds:g} s)',
        'eval_loss': zero,                        # the gate's: zero state, every window
        'eval_loss_covered': zero_covered,        # zero state, the windows warm covers
        'eval_loss_warm': warm,                   # state carried window to window
        **({'eval_loss_ema': ema} if ema else {}),  # spec -> the gate's loss of that average
        'steps': arm.steps, 'train_seconds': round(arm.seconds, 1),
        'ms_per_step': round(1000 * arm.seconds / max(arm.steps - 1, 1), 1),
        'epochs': round(arm.steps / arm.steps_per_epoch, 2),
        'last_train_loss': float(np.mean(arm.losses[-20:])),
        'precision': arm.s.precision, 'load_start': run.load_start, 'load_end': common.loadavg(),
        'machine': {k: machine[k] for k in ('cpu_model', 'cpu_family', 'simd', 'cores')},
        'settings': vars(arm.s)})
  previous = {}
  if os.path.exists(a.output):
    with open(a.output) as f:
      previous = json.load(f)
  # Rows from before rows carried their machine took the file's one machine.
  for row in previous.get('results', []):
    row.setdefault('machine', {k: previous['machine'][k] for k in ('cpu_model', 'simd', 'cores')})
  run.write({'results': previous.get('results', []) + rows}, a.output)
  print(common.table(rows, ['tag', 'mode', 'eval_loss', 'eval_loss_warm', 'steps', 'ms_per_step',
                            'epochs', 'last_train_loss', 'load_end']))
  for row in rows:
    if 'eval_loss_ema' in row:
      print(row['tag'], 'EMA of the weights:', ', '.join(
          f'{m}: {loss:.4f} ({loss - row["eval_loss"]:+.4f})'
          for m, loss in row['eval_loss_ema'].items()))


if __name__ == '__main__':
  sys.exit(main())
