"""bench/quality: a preset's eval loss through the real pipeline, beside the tutorial's recipe.

  .venv/bin/python -m bench.quality                  # `cpu` preset + its peer, ~12 min
  .venv/bin/python -m bench.quality --pairs 2        # A B B A: pipeline, peer, peer, pipeline
  .venv/bin/python -m bench.quality --quick          # plumbing: 30 s budgets, ~4 min
  .venv/bin/python -m bench.quality --no-peer [--overrides k=v,... ...]
  .venv/bin/python -m bench.quality --in-process     # every side in this one process

Runs the whole local pipeline (fresh output directory, so nothing is cached) on
the tutorial's corpus and reports what the EvaluationGate measured on the pushed
candidate: eval loss in nats/char over the eval windows (the last 10% of the
text), with the Trainer's step count and precision. Each `--overrides` value
(preset fields, as in CHAR_RNN_OVERRIDES; '' for the preset as it is) is one
more full run, so variants are compared on the same machine in the same session.

Then, in the same invocation on the same machine, the peer: the TF tutorial's
recipe (its model class, bench/tutorial.py: Embedding 256 -> GRU -> Dense, here
GRU-256; Adam 5e-3, constant; float32; batch 64 x 100 characters; windows re-cut
at random offsets) trained on the pipeline's own Examples artifact (the same
train/eval split, the same re-cut input pipeline), for the same wall budget
counted the same way (from before building the model to the end of its final
evaluation, stopping early enough for that evaluation to fit), and scored on the
same eval windows. Both models are scored by one scorer here too (Keras, float32,
every eval window from a zero state, as the gate's `score` does).

Each pipeline run and each peer runs in a fresh Python process (bench/quality/side.py),
as `tfx run create` starts one per run: no run inherits the threads, traced
functions or memory of the ones before it (`--in-process`, the earlier way, runs
them all in this process; its fifth training once spent 28 s in an export that
takes < 2 s alone).

Why the peer runs here: the preset's lead depends on the machine (its step time,
whether bf16 is native), so it only means something measured side by side.
Results go to bench/results/quality_<cpu kind>.json (the CPU model and its best
SIMD, e.g. amd-epyc-avx2), one file per CPU kind. Target for `cpu`: >= 0.05
nats/char better than the peer on every CPU kind.
"""

import argparse
import glob
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict

import keras

from bench import common
from components import training
from components.text import CharVocab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CORPUS = os.path.join(REPO, 'data', 'tinyshakespeare.txt')

# The tutorial's recipe at the size the `cpu` preset is compared with (the issue's).
PEER = {'embedding_dim': 256, 'rnn_units': 256, 'learning_rate': 5e-3, 'batch_size': 64,
        'seq_length': 100, 'precision': 'float32', 'random_offsets': True,
        'shuffle_buffer': 10_000}
QUICK_SECONDS = 30
TARGET_MARGIN = 0.05   # nats/char the preset must beat the peer by


def cpu_kind(machine: Dict[str, Any]) -> str:
  """A file-name slug for the CPU kind: model name, family (a VM's 'AMD EPYC' is Zen 3, 4
  or 5) and its best SIMD for this work."""
  name = re.sub(r'\(r\)|\(tm\)|cpu|processor|@.*$', ' ', machine['cpu_model'].lower())
  name = '-'.join(re.findall(r'[a-z0-9]+', name)) or 'unknown-cpu'
  if machine.get('cpu_family') is not None:
    name += f'-f{machine["cpu_family"]}'
  simd = machine.get('simd') or []
  best = next((tag for flag, tag in (('amx_bf16', 'amx'), ('avx512_bf16', 'avx512bf16'),
                                     ('avx512f', 'avx512'), ('avx2', 'avx2'))
               if flag in simd), 'nosimd')
  return f'{name}-{best}'


# ------------------------------------------------------------------ pipeline
def run_pipeline(preset: str, overrides: str, corpus: str, output_dir: str):
  from tfx import v1 as tfx  # pylint: disable=g-import-not-at-top
  from pipeline import local_runner  # pylint: disable=g-import-not-at-top

  load_start = common.loadavg()
  started = time.monotonic()
  tfx.orchestration.LocalDagRunner().run(local_runner.build(
      output_dir, preset, [corpus], overrides, warm_start=False))
  pipeline_seconds = time.monotonic() - started

  def one(pattern):
    [path] = glob.glob(os.path.join(output_dir, 'pipeline_root', '*', *pattern))
    return path
  metrics_path = one(('CharRnnTrainer', 'model', '*', 'Format-Serving', 'assets.extra',
                      'metrics.json'))
  with open(metrics_path) as f:
    metrics = json.load(f)
  with open(one(('EvaluationGate', 'blessing', '*', 'evaluation.json'))) as f:
    evaluation = json.load(f)
  row = {
      'side': f'pipeline {preset}' + (f' ({overrides})' if overrides else ''),
      'eval_loss': evaluation['eval_loss'],
      'bits_per_char': evaluation['bits_per_char'],
      'train_steps': metrics.get('train_steps'),
      'epochs_run': metrics['epochs_run'],
      'budget_seconds': metrics.get('time_budget_seconds'),
      'elapsed_seconds': metrics.get('elapsed_seconds'),
      'ms_per_step': None,
      'precision': metrics.get('precision'),
      'model': f"{metrics['config']['rnn_type'].upper()}-{metrics['config']['rnn_units']}",
      'last_train_loss': metrics['history']['loss'][-1],
      'pipeline_seconds': pipeline_seconds,
      'blessed': evaluation['blessed'],
      'load': f'{load_start[0]:.1f} -> {common.loadavg()[0]:.1f}',
  }
  artifacts = {
      'examples': one(('WindowGen', 'examples', '*')),
      'vocabulary': one(('VocabularyGen', 'vocabulary', '*')),
      'keras_dir': os.path.join(os.path.dirname(metrics_path), 'keras'),
      'model_config': {k: metrics['config'][k] for k in (
          'embedding_dim', 'rnn_type', 'rnn_units', 'num_layers', 'dropout')},
  }
  return row, {'row': row, 'trainer_metrics': metrics, 'evaluation': evaluation,
               'output_dir': output_dir}, artifacts


# ---------------------------------------------------------------------- eval
def eval_windows(examples_uri: str):
  """Every window of the eval split (none dropped), int32 [n, seq_length + 1]."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from components import examples_format  # pylint: disable=g-import-not-at-top
  files = examples_format.split_files(examples_uri, 'eval')
  ds = examples_format.record_dataset(files).batch(1024)
  return np.concatenate([examples_format.parse_windows(b).numpy() for b in ds])


def score(model, windows, batch: int = 256) -> float:
  """Mean nats per predicted character, float32 logits, each window from a zero state."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tf.function(reduce_retracing=True)
  def window_losses(w):
    logits = tf.cast(model(w[:, :-1], training=False), tf.float32)
    return tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(w[:, 1:], logits))

  total = sum(float(window_losses(tf.constant(windows[i:i + batch])))
              for i in range(0, len(windows), batch))
  return total / (windows.shape[0] * (windows.shape[1] - 1))


def score_pipeline_model(artifacts: Dict[str, Any], vocab_size: int, windows) -> float:
  """The Trainer's exported Keras weights, scored by this module's scorer."""
  from components import model as model_lib  # pylint: disable=g-import-not-at-top
  model = model_lib.build_keras_model(vocab_size, **artifacts['model_config'])
  model.load_weights(os.path.join(artifacts['keras_dir'], 'model.weights.h5'))
  return score(model, windows)


# ---------------------------------------------------------------------- peer
def run_peer(artifacts: Dict[str, Any], budget_seconds: float, seed: int = 0):
  """The tutorial's recipe on the pipeline's Examples, for `budget_seconds` of wall time."""
  from bench.tutorial import MyModel  # pylint: disable=g-import-not-at-top
  from components import examples_format, trainer_module  # pylint: disable=g-import-not-at-top

  load_start = common.loadavg()
  clock = training.Clock()                     # as run_fn's: from before the model exists
  vocab = CharVocab.load(artifacts['vocabulary'])
  windows = eval_windows(artifacts['examples'])
  keras.utils.set_random_seed(seed)
  keras.mixed_precision.set_global_policy(PEER['precision'])
  model = MyModel(len(vocab), PEER['embedding_dim'], PEER['rnn_units'])
  model.compile(optimizer=keras.optimizers.Adam(PEER['learning_rate']),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  train_ds = trainer_module.make_dataset(
      [examples_format.split_pattern(artifacts['examples'], 'train')], PEER['seq_length'],
      PEER['batch_size'], shuffle_buffer=PEER['shuffle_buffer'], repeat=True,
      random_offsets=PEER['random_offsets'], seed=seed)
  eval_batches = math.ceil(len(windows) / 256)
  # Stops when one more step would not leave its final evaluation inside the
  # budget (estimated as the Trainer's Budget does); it has no export to reserve.
  budget = _PeerBudget(budget_seconds, clock, eval_batches, sample=False)
  stopper = _BudgetStop(budget, clock)
  model.fit(train_ds, epochs=1_000_000, steps_per_epoch=100, callbacks=[stopper], verbose=0)
  train_seconds = clock.elapsed()
  eval_loss = score(model, windows)
  elapsed = clock.elapsed()
  row = {
      'side': 'peer: tutorial recipe',
      'eval_loss': eval_loss, 'bits_per_char': eval_loss / math.log(2),
      'train_steps': stopper.steps, 'epochs_run': None,
      'budget_seconds': budget_seconds, 'elapsed_seconds': elapsed,
      'ms_per_step': round(1000 * (budget.step_seconds or 0.0), 1),
      'precision': PEER['precision'],
      'model': f"GRU-{PEER['rnn_units']}",
      'last_train_loss': stopper.last_loss, 'pipeline_seconds': None, 'blessed': None,
      'load': f'{load_start[0]:.1f} -> {common.loadavg()[0]:.1f}',
  }
  detail = {'row': row, 'recipe': PEER, 'train_seconds': train_seconds,
            'first_step_seconds': budget.trace_seconds,
            'eval_seconds': elapsed - train_seconds, 'eval_windows': int(len(windows)),
            'seed': seed}
  return row, detail, windows, len(vocab)


def in_fresh_process(side: str, **kwargs) -> Dict[str, Any]:
  """bench/quality/side.py's result for run_pipeline or run_peer run with `kwargs`."""
  with tempfile.TemporaryDirectory(prefix='bench-quality-side-') as tmp:
    result = os.path.join(tmp, 'result.json')
    done = subprocess.run([sys.executable, '-m', 'bench.quality.side', side,
                           json.dumps(kwargs), result], cwd=REPO, check=False)
    if done.returncode or not os.path.exists(result):
      raise SystemExit(f'bench.quality: the {side} side failed (exit {done.returncode}); '
                       'its output is above')
    with open(result) as f:
      return json.load(f)


class _PeerBudget(training.Budget):
  """The Trainer's budget rule, less the export the peer does not have."""

  def export_seconds(self) -> float:
    return 0.0


class _BudgetStop(keras.callbacks.Callback):
  """Times each step into the budget and stops training when it is spent."""

  def __init__(self, budget: training.Budget, clock: training.Clock):
    super().__init__()
    self._budget, self._clock = budget, clock
    self.steps, self.last_loss, self._start = 0, None, None

  def on_train_batch_begin(self, batch, logs=None):
    self._start = self._clock.now()

  def on_train_batch_end(self, batch, logs=None):
    seconds = self._clock.now() - self._start
    if self.steps == 0:
      self._budget.record_first_step(seconds)    # mostly tracing
    else:
      self._budget.record_step(seconds)
    self.steps += 1
    self.last_loss = float(logs['loss'])
    if self._budget.exhausted():
      self.model.stop_training = True


# ---------------------------------------------------------------------- main
def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--preset', default='cpu')
  parser.add_argument('--overrides', nargs='*', default=[''],
                      help='one full pipeline run per value (the first is compared with the peer)')
  parser.add_argument('--corpus', default=CORPUS)
  parser.add_argument('--no-peer', dest='peer', action='store_false',
                      help='pipeline runs only')
  parser.add_argument('--pairs', type=int, default=1,
                      help='pipeline/peer pairs, in the order A B, B A, A B, ... so that '
                           'a drift in the machine\'s load hits both sides alike')
  parser.add_argument('--quick', action='store_true',
                      help=f'plumbing check: {QUICK_SECONDS} s budgets for both sides')
  parser.add_argument('--in-process', dest='fresh', action='store_false',
                      help='run every pipeline and peer in this process instead of a fresh '
                           'process each (as `tfx run create` does)')
  parser.add_argument('--output', default=None,
                      help='results JSON (default bench/results/quality_<cpu kind>[_quick].json)')
  args = parser.parse_args()
  if args.pairs < 1:
    parser.error('--pairs must be >= 1')

  from pipeline import configs  # pylint: disable=g-import-not-at-top
  machine = common.machine()
  kind = cpu_kind(machine)
  run = common.Run(f'quality_{kind}')
  variants = []
  for overrides in args.overrides or ['']:
    if args.quick:
      overrides = ', '.join(filter(None, [overrides, f'max_train_seconds={QUICK_SECONDS}']))
    variants.append((overrides, configs.get_preset(args.preset, overrides)))
  budget = variants[0][1].max_train_seconds
  if args.peer and not budget:
    raise SystemExit(f'the {args.preset} preset has no max_train_seconds: no budget to give '
                     'the peer (use --no-peer, or a preset with a time budget)')

  rows, details, pairs = [], [], []
  artifacts = None

  def pipelines():
    nonlocal artifacts
    first = None
    for overrides, _ in variants:
      output_dir = tempfile.mkdtemp(prefix='bench-quality-')
      if args.fresh:
        side = in_fresh_process('pipeline', preset=args.preset, overrides=overrides,
                                corpus=args.corpus, output_dir=output_dir)
        row, detail, found = side['row'], side['detail'], side['artifacts']
      else:
        row, detail, found = run_pipeline(args.preset, overrides, args.corpus, output_dir)
      rows.append(row)
      details.append(detail)
      print(common.table([row], list(row)), flush=True)
      if first is None:
        first, artifacts = (row, found), found
    return first

  def peer():
    if args.fresh:
      side = in_fresh_process('peer', artifacts=artifacts, budget_seconds=budget)
      row, detail = side['row'], side['detail']
      windows = eval_windows(artifacts['examples'])
      vocab_size = len(CharVocab.load(artifacts['vocabulary']))
    else:
      row, detail, windows, vocab_size = run_peer(artifacts, budget)
    rows.append(row)
    details.append(detail)
    print(common.table([row], list(row)), flush=True)
    return row, windows, vocab_size

  for i in range(args.pairs if args.peer else 1):
    if not args.peer:
      pipelines()
      break
    if i % 2 and artifacts is not None:      # B A: the peer first, on the last Examples
      peer_row, windows, vocab_size = peer()
      pipeline_row, found = pipelines()
    else:
      pipeline_row, found = pipelines()
      peer_row, windows, vocab_size = peer()
    pairs.append({
        'pair': i + 1, 'order': 'peer, pipeline' if i % 2 else 'pipeline, peer',
        'pipeline_eval_loss': pipeline_row['eval_loss'], 'peer_eval_loss': peer_row['eval_loss'],
        'pipeline_steps': pipeline_row['train_steps'], 'peer_steps': peer_row['train_steps'],
        'preset_lead_nats_per_char': peer_row['eval_loss'] - pipeline_row['eval_loss'],
        # Both Keras models through one scorer (the gate's figure is the exported model's).
        'same_scorer_eval_loss': {'pipeline': score_pipeline_model(found, vocab_size, windows),
                                  'peer': peer_row['eval_loss']},
    })

  comparison = None
  if pairs:
    lead = sum(p['preset_lead_nats_per_char'] for p in pairs) / len(pairs)
    comparison = {
        'preset_lead_nats_per_char': lead, 'pairs': pairs,
        'target_nats_per_char': TARGET_MARGIN, 'met': lead >= TARGET_MARGIN,
        'note': 'lead = peer eval loss - pipeline eval loss, mean over pairs; the pipeline\'s '
                'is the gate\'s (exported model, `score`), the peer\'s this module\'s scorer '
                'over the same windows; same_scorer_eval_loss scores both Keras models with '
                'that one scorer',
    }
  path = run.write({'cpu_kind': kind, 'quick': args.quick,
                    'processes': 'one per side' if args.fresh else 'one for all sides',
                    'results': rows,
                    'comparison': comparison, 'runs': details},
                   args.output or os.path.join(
                       common.RESULTS_DIR, f'quality_{kind}{"_quick" if args.quick else ""}.json'))
  columns = ['side', 'model', 'precision', 'eval_loss', 'bits_per_char', 'train_steps',
             'budget_seconds', 'elapsed_seconds', 'load']
  print(common.table(rows, columns))
  if comparison:
    print(f"\n`{args.preset}` leads the peer by {lead:+.4f} nats/char over {len(pairs)} "
          f"pair(s) (target >= {TARGET_MARGIN}: {'met' if comparison['met'] else 'MISSED'}); "
          'same scorer: ' + '; '.join(
              f"pipeline {p['same_scorer_eval_loss']['pipeline']:.4f}, peer "
              f"{p['same_scorer_eval_loss']['peer']:.4f}" for p in pairs))
  print(f'\n{common.machine_line(machine)}; CPU kind {kind}\nwritten to {path}')


if __name__ == '__main__':
  main()
