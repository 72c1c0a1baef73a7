"""The training loop's bookkeeping: budget, divergence, schedule, progress, history, backups.

Keras' `fit` runs the steps; `TrainingMonitor`, one callback, keeps the state
that must survive a kill (`TrainingState`: global step, epoch, position in the
epoch, seconds spent, per-step and per-epoch history, early-stopping record, data
seed) and acts on it after every step:

* divergence: a NaN or infinite loss, or one above `divergence_loss_ratio` times
  the loss of a uniform guess (ln of the vocabulary size), stops training with
  `TrainingDivergedError` naming the step (a model that far gone never recovers;
  lr 1e7 on `tiny` sits at 2.5e8 nats without ever becoming NaN);
* the learning-rate schedule, from the step and the seconds spent, so a resumed
  run continues it where the backup left it;
* the time budget (`Budget`), measured from the start of run_fn and kept across
  kills, stopping early enough that the last validation, the sample and the
  export fit in it (estimated from their measured times);
* progress: one updating line on a terminal, a log line every few seconds
  otherwise (`Progress`);
* history for the run report (`history.json`, schema in `write_history`);
* step-level backups (`BackupStore`): model weights with optimizer state plus
  the state, written to a temporary directory and renamed into place, so a kill
  mid-write leaves the previous backup usable.

* precision (`choose_precision`): `auto` times a few training steps of each
  candidate (float32, mixed_bfloat16) on the machine it runs on and keeps the
  faster; CPU flags only decide whether bf16 is worth timing at all.
* size (`choose_size`): under a time budget, the largest recurrent layer whose
  measured step still leaves the budget `min_budget_steps` steps; a machine
  that buys few steps trains a smaller model (bench/quality/explore.py: at
  ~500 steps GRU-256 beats GRU-384, at 1,200+ GRU-384 wins).

Allowed values of `precision` and `lr_schedule` live here, beside their code.
"""

import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf
from absl import logging

# auto: measured (choose_precision): float32 unless mixed_bfloat16 is the faster
# by BF16_MARGIN on this machine; float32 without measuring on GPUs and on CPUs
# without native bf16.
PRECISIONS = ('auto', 'float32', 'mixed_bfloat16', 'mixed_float16')
AUTO_CANDIDATES = ('float32', 'mixed_bfloat16')
# bf16 must beat float32 by this fraction of a step to be chosen: a tie keeps
# float32's precision (and the step timings of a shared machine vary by a few %).
BF16_MARGIN = 0.05
# Steps per candidate: untimed (the first traces), then timed, taking turns.
PRECISION_WARMUP_STEPS = 3
PRECISION_TIMED_STEPS = 5
# Learning-rate multipliers over progress in [0, 1] (1 = the end of training),
# scaled between min_lr_ratio and 1 (constant ignores min_lr_ratio).
LR_SCHEDULES: Dict[str, Optional[Callable[[float], float]]] = {
    'constant': None,
    'cosine': lambda progress: 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))),
}

# Sizes `choose_size` considers: rnn_units, then this much smaller, down to
# min_rnn_units (multiples of 64 suit SIMD widths and GPU tiles alike).
SIZE_STEP_UNITS = 64
# Steps timed on the largest size when precision was not measured: one untimed
# (it traces), then the median of these.
SIZE_WARMUP_STEPS = 1
SIZE_TIMED_STEPS = 3

STOP_EPOCHS = 'epochs'
STOP_TIME_BUDGET = 'time_budget'
STOP_EARLY_STOPPING = 'early_stopping'
STOP_DIVERGED = 'diverged'

HISTORY_FILE = 'history.json'
MAX_HISTORY_POINTS = 400          # per-step points in history.json, at most
# The export (serving module, three traced signatures, SavedModel write) is
# estimated as this many times the first epoch's sample (module + one trace;
# tiny under heavy load here: validation + first sample 20 s, export 8 s),
# and never below EXPORT_SECONDS_FLOOR.
EXPORT_PER_SAMPLE = 1.5
EXPORT_SECONDS_FLOOR = 5.0


class TrainingDivergedError(RuntimeError):
  """Training went to NaN/inf or far above a uniform guess; nothing is exported."""


def native_bf16_flags(cpuinfo: str = '/proc/cpuinfo') -> List[str]:
  """The CPU's native bf16 flags (AVX512-BF16, AMX-BF16); [] when none or unknown."""
  try:
    with open(cpuinfo) as f:
      text = f.read()
  except OSError:
    return []
  flags = set()
  for line in text.splitlines():
    key, _, value = line.partition(':')
    if key.strip() == 'flags':
      flags.update(value.split())
  return [f for f in ('avx512_bf16', 'amx_bf16') if f in flags]


def resolve_precision(precision: str) -> str:
  """Without measuring: `auto` is bf16 compute on CPUs with native bf16, else float32.

  For callers that cannot time steps; run_fn measures (choose_precision).
  """
  if precision != 'auto':
    return precision
  if tf.config.list_physical_devices('GPU'):
    return 'float32'
  return 'mixed_bfloat16' if native_bf16_flags() else 'float32'


@dataclasses.dataclass
class PrecisionChoice:
  """The compute precision and why; metrics.json records all three."""
  precision: str
  reason: str
  timings_ms: Optional[Dict[str, float]] = None   # median ms per step, by candidate


def pick_faster(timings_ms: Dict[str, float], margin: float = BF16_MARGIN) -> PrecisionChoice:
  """float32 unless mixed_bfloat16's step is at least `margin` shorter."""
  fp32, bf16 = timings_ms['float32'], timings_ms['mixed_bfloat16']
  for name, value in timings_ms.items():
    if not (math.isfinite(value) and value > 0):
      raise ValueError(f'step time of {name} is {value!r} ms: not a duration')
  measured = f'measured {bf16:.1f} ms/step in mixed_bfloat16 vs {fp32:.1f} in float32'
  if bf16 <= (1 - margin) * fp32:
    return PrecisionChoice('mixed_bfloat16', f'{measured}: bf16 is {fp32 / bf16:.2f}x faster',
                           timings_ms)
  return PrecisionChoice('float32', f'{measured}: bf16 is not faster by {100 * margin:.0f}% '
                         'or more, so float32', timings_ms)


def time_steps(steps: Dict[str, Callable[[], Any]], warmup: int = PRECISION_WARMUP_STEPS,
               timed: int = PRECISION_TIMED_STEPS) -> Dict[str, float]:
  """Median milliseconds of `timed` calls of each step function, after `warmup`.

  The timed calls take turns (a, b, a, b, ...) so that a shared machine's load
  changes hit every candidate alike. Each call must return only once its step
  is done (Keras' train_on_batch returns numpy values).
  """
  for step in steps.values():
    for _ in range(warmup):
      step()
  times: Dict[str, List[float]] = {name: [] for name in steps}
  for _ in range(timed):
    for name, step in steps.items():
      started = time.perf_counter()
      step()
      times[name].append(time.perf_counter() - started)
  return {name: round(1000 * float(np.median(t)), 2) for name, t in times.items()}


def choose_precision(precision: str, time_candidates: Callable[[], Dict[str, float]],
                     gpu: Optional[bool] = None,
                     bf16_flags: Optional[List[str]] = None) -> PrecisionChoice:
  """`precision`, or for `auto` the faster candidate as measured on this machine.

  `time_candidates()` returns the median step in ms of each of AUTO_CANDIDATES;
  it is called only on a CPU with native bf16 (elsewhere bf16 is emulated and
  float32 is taken without measuring).
  """
  if precision != 'auto':
    return PrecisionChoice(precision, 'set in the preset')
  if gpu is None:
    gpu = bool(tf.config.list_physical_devices('GPU'))
  if gpu:
    return PrecisionChoice('float32', 'auto on a GPU: float32 without measuring')
  flags = native_bf16_flags() if bf16_flags is None else bf16_flags
  if not flags:
    return PrecisionChoice('float32', 'auto: the CPU has no native bf16 (neither avx512_bf16 '
                           'nor amx_bf16), so float32 without measuring')
  choice = pick_faster(time_candidates())
  choice.reason = f'auto on a CPU with {"+".join(flags)}: {choice.reason}'
  return choice


@dataclasses.dataclass
class SizeChoice:
  """The recurrent layer's size and why; metrics.json records it."""
  rnn_units: int
  reason: str
  step_ms: Optional[Dict[int, float]] = None     # measured (largest) and predicted, by size


def size_ladder(largest: int, smallest: Optional[int]) -> List[int]:
  """[largest, largest - 64, ..., smallest]: the sizes choose_size considers."""
  if smallest is None or smallest >= largest:
    return [largest]
  sizes = list(range(largest, smallest, -SIZE_STEP_UNITS))
  return sizes + [smallest]


def step_cost(rnn_units: int, rnn_type: str, num_layers: int, embedding_dim: int,
              vocab_size: int) -> float:
  """Multiply-adds per character of the model's forward pass (the backward pass is
  about twice that for every term alike): the gates' input and recurrent matmuls
  of every layer, and the logits. Used only as a ratio between sizes."""
  gates = 4 if rnn_type == 'lstm' else 3
  cost, inputs = 0.0, embedding_dim
  for _ in range(num_layers):
    cost += gates * rnn_units * (inputs + rnn_units)
    inputs = rnn_units
  return cost + rnn_units * vocab_size


def choose_size(ladder: List[int], largest_step_ms: float, seconds_left: float,
                min_steps: int, cost: Callable[[int], float]) -> SizeChoice:
  """The largest size of `ladder` whose step lets `seconds_left` buy `min_steps` steps.

  The largest size's step is measured; the others' are predicted from it in
  proportion to `cost(size)` (measured here: GRU-320 and GRU-256 take 0.72 and
  0.55 of GRU-384's step, predicted 0.72 and 0.49). When no size buys enough,
  the smallest.
  """
  if not (math.isfinite(largest_step_ms) and largest_step_ms > 0):
    raise ValueError(f'step time {largest_step_ms!r} ms is not a duration')
  top = ladder[0]
  predicted = {units: round(largest_step_ms * cost(units) / cost(top), 2) for units in ladder}
  predicted[top] = round(largest_step_ms, 2)
  buys = {units: seconds_left * 1000.0 / ms for units, ms in predicted.items()}
  chosen = next((u for u in ladder if buys[u] >= min_steps), ladder[-1])
  how = (f'{top} units measured {largest_step_ms:.0f} ms/step: the {seconds_left:.0f} s left '
         f'buy ~{buys[top]:.0f} steps')
  if chosen == top:
    why = f'{how}, at least min_budget_steps={min_steps}, so {top} units'
  elif buys[chosen] >= min_steps:
    why = (f'{how}, fewer than min_budget_steps={min_steps}; {chosen} units (predicted '
           f'{predicted[chosen]:.0f} ms/step, ~{buys[chosen]:.0f} steps) is the largest that buys '
           'enough')
  else:
    why = (f'{how}, fewer than min_budget_steps={min_steps}, and no size down to '
           f'{chosen} buys enough: the smallest, {chosen} units (~{buys[chosen]:.0f} steps)')
  return SizeChoice(chosen, why, predicted)


def training_progress(step: int, total_steps: int, clock: 'Clock',
                      budget: 'Budget') -> float:
  """How far training is, in [0, 1]: by steps or by the budget, whichever is further."""
  training_seconds = budget.training_seconds()
  time_progress = clock.elapsed() / training_seconds if training_seconds else 0.0
  return max(step / total_steps, time_progress)


def final_eval_loss(model, state: 'TrainingState', best_weights: Optional[List[np.ndarray]],
                    base_learning_rate: float) -> float:
  """The eval loss of the weights to export, which it leaves in `model`.

  After early stopping: the best epoch's weights and loss; otherwise the last
  validation, which ran on these very weights at the last epoch's end (a stop
  mid-epoch validates too), so no second pass over the eval split. A loss that
  is missing or not finite raises TrainingDivergedError: nothing is exported.
  """
  if state.stop_reason == STOP_EARLY_STOPPING and best_weights is not None:
    model.set_weights(best_weights)
    eval_loss = state.best_val_loss
    logging.info('Restored the weights of epoch %d (val_loss %.4f).', state.best_epoch, eval_loss)
  else:
    eval_loss = state.epochs[-1]['val_loss']
  if eval_loss is None or not math.isfinite(eval_loss):
    raise TrainingDivergedError(
        f'training diverged: the final eval loss is {eval_loss}; lower learning_rate '
        f'(now {base_learning_rate:g}) or set clipnorm')
  return eval_loss


def learning_rate(base: float, schedule: str, min_ratio: float, progress: float) -> float:
  shape = LR_SCHEDULES[schedule]
  if shape is None:
    return base
  return base * (min_ratio + (1 - min_ratio) * shape(max(progress, 0.0)))


def divergence(loss: float, ceiling: float) -> Optional[str]:
  """Why `loss` counts as diverged ('nan', 'inf', or too large), or None."""
  if math.isnan(loss):
    return 'nan'
  if math.isinf(loss):
    return 'inf'
  if loss > ceiling:
    return f'{loss:.4g}, above the divergence ceiling of {ceiling:.4g} nats/char'
  return None


# ------------------------------------------------------------------ time
class Clock:
  """Seconds since run_fn started, plus those spent by the executions it resumes."""

  def __init__(self, now: Callable[[], float] = time.monotonic):
    self._now = now
    self._start = now()
    self.spent_before = 0.0

  def now(self) -> float:
    return self._now()

  def elapsed(self) -> float:
    return self.spent_before + self._now() - self._start


class Budget:
  """Whether one more step still leaves time for the last validation, sample and export.

  Every duration is measured as training goes: a step (moving average), a
  validation pass, the epoch's sample, and the export (estimated as
  EXPORT_PER_SAMPLE times the first sample, which builds and traces a serving
  module as the export does). Until one is measured it is estimated from the
  first step, whose time is mostly tracing the training function: tracing is
  what makes a first validation, sample or export slow, and it scales with the
  machine's load as that step did.
  """

  def __init__(self, seconds: Optional[float], clock: Clock, eval_batches: int,
               sample: bool = True):
    self.seconds, self._clock, self._eval_batches = seconds, clock, eval_batches
    self._sample = sample
    self.trace_seconds: Optional[float] = None
    self.step_seconds: Optional[float] = None
    self.eval_seconds: Optional[float] = None
    self.sample_seconds = 0.0
    self.first_sample_seconds: Optional[float] = None

  def record_first_step(self, seconds: float) -> None:
    if self.trace_seconds is None:
      self.trace_seconds = seconds

  def record_step(self, seconds: float) -> None:
    self.step_seconds = seconds if self.step_seconds is None else (
        0.9 * self.step_seconds + 0.1 * seconds)

  def record_eval(self, seconds: float) -> None:
    self.eval_seconds = seconds

  def record_sample(self, seconds: float) -> None:
    self.sample_seconds = seconds
    if self.first_sample_seconds is None:
      self.first_sample_seconds = seconds

  def export_seconds(self) -> float:
    basis = self.first_sample_seconds or self.trace_seconds or 0.0
    return max(EXPORT_SECONDS_FLOOR, EXPORT_PER_SAMPLE * basis)

  def reserve(self) -> float:
    """Seconds the work after the last step needs: validation, sample, export."""
    trace, step = self.trace_seconds or 0.0, self.step_seconds or 0.0
    evaluation = self.eval_seconds
    if evaluation is None:
      evaluation = trace + 0.5 * self._eval_batches * step
    sample = self.sample_seconds
    if self._sample and self.first_sample_seconds is None:
      sample = trace
    return evaluation + sample + self.export_seconds()

  def training_seconds(self) -> Optional[float]:
    """The part of the budget that steps may use (the schedule anneals over it)."""
    if self.seconds is None:
      return None
    return max(self.seconds - self.reserve(), 1e-9)

  def left(self) -> Optional[float]:
    return None if self.seconds is None else self.seconds - self._clock.elapsed()

  def exhausted(self) -> bool:
    """True when one more step would not leave the reserve inside the budget."""
    if self.seconds is None:
      return False
    return (self._clock.elapsed() + (self.step_seconds or 0.0) + self.reserve()
            > self.seconds)


# ----------------------------------------------------------------- state
@dataclasses.dataclass
class TrainingState:
  """What a backup holds besides the weights; JSON."""
  seed: int
  step: int = 0                  # steps done, all executions together
  epoch: int = 0                 # the epoch in progress (0-based)
  batch_in_epoch: int = 0        # its steps done
  epoch_loss_sum: float = 0.0    # their losses' sum
  elapsed_seconds: float = 0.0   # the clock when saved
  stop_reason: Optional[str] = None
  resumed_from_step: int = 0
  record_every: int = 1          # steps per history point (doubles as points merge)
  window_sum: float = 0.0        # losses of the steps since the last point
  window_count: int = 0
  steps: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  epochs: List[Dict[str, Any]] = dataclasses.field(default_factory=list)
  best_val_loss: Optional[float] = None
  best_epoch: Optional[int] = None
  wait: int = 0
  rnn_units: Optional[int] = None  # the size trained (choose_size): a resume keeps it

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> 'TrainingState':
    return cls(**json.loads(text))

  def add_step_point(self, loss: float, lr: float, elapsed: float) -> None:
    """One history point per `record_every` steps (mean loss); halves when too many."""
    self.window_sum += loss
    self.window_count += 1
    if self.window_count < self.record_every:
      return
    self.steps.append({'step': self.step, 'epoch': self.epoch + 1,
                       'loss': self.window_sum / self.window_count,
                       'learning_rate': lr, 'elapsed_seconds': elapsed})
    self.window_sum, self.window_count = 0.0, 0
    if len(self.steps) >= MAX_HISTORY_POINTS:
      merged = []
      for a, b in zip(self.steps[0::2], self.steps[1::2]):
        merged.append(dict(b, loss=(a['loss'] + b['loss']) / 2))
      self.steps = merged
      self.record_every *= 2


def write_history(directory: str, state: TrainingState, budget_seconds: Optional[float]) -> str:
  """history.json for the run report:
  {"steps": [{"step", "epoch", "loss", "learning_rate", "elapsed_seconds"}, ...],
   "epochs": [{"epoch", "loss", "val_loss", "sample", "elapsed_seconds"}, ...],
   "time_budget_seconds": float|null, "stop_reason": str}
  Epochs count from 1; a step's loss is the mean over the steps since the last point.
  """
  path = os.path.join(directory, HISTORY_FILE)
  tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(path, 'w') as f:
    f.write(json.dumps({'steps': state.steps, 'epochs': state.epochs,
                        'time_budget_seconds': budget_seconds,
                        'stop_reason': state.stop_reason}, indent=1))
  return path


# --------------------------------------------------------------- backups
class BackupStore:
  """Step backups in one directory: <dir>/step-<n>/{model.weights.h5, best.npz,
  optimizer.npz, state.json}.

  A backup is written under a temporary name and renamed into place once
  complete (state.json last), then older ones are deleted: a kill at any moment
  leaves at least one complete backup. `restore` takes the newest that loads.

  The weights file holds the optimizer's slots when the optimizer is the
  model's own (compiled, as fit trains); a custom loop's optimizer (the
  multi-worker path's) is passed as `optimizer` and goes to optimizer.npz.
  """

  _NAME = re.compile(r'step-(\d+)$')
  WEIGHTS, BEST, OPTIMIZER, STATE = ('model.weights.h5', 'best.npz', 'optimizer.npz',
                                     'state.json')

  def __init__(self, directory: str):
    self.directory = directory

  def _complete(self) -> List[str]:
    """Complete backups, newest first."""
    if not tf.io.gfile.isdir(self.directory):
      return []
    names = [n.rstrip('/') for n in tf.io.gfile.listdir(self.directory)]
    found = [(int(m.group(1)), n) for n in names for m in [self._NAME.match(n)] if m]
    return [os.path.join(self.directory, n) for _, n in sorted(found, reverse=True)
            if tf.io.gfile.exists(os.path.join(self.directory, n, self.STATE))]

  def save(self, model: keras.Model, state: TrainingState,
           best_weights: Optional[List[np.ndarray]] = None,
           optimizer: Optional[keras.optimizers.Optimizer] = None) -> str:
    name = f'step-{state.step:09d}'
    tmp = os.path.join(self.directory, f'{name}.tmp-{os.getpid()}-{time.time_ns()}')
    tf.io.gfile.makedirs(tmp)
    local = tempfile.mkdtemp(prefix='char-rnn-backup-')
    arrays = {self.BEST: best_weights,
              self.OPTIMIZER: None if optimizer is None else [
                  np.asarray(v.numpy()) for v in optimizer.variables]}
    try:
      # h5 needs a local file; the backup may be on gs://.
      model.save_weights(os.path.join(local, self.WEIGHTS))
      tf.io.gfile.copy(os.path.join(local, self.WEIGHTS), os.path.join(tmp, self.WEIGHTS))
      for file_name, values in arrays.items():
        if values is not None:
          np.savez(os.path.join(local, file_name), *values)
          tf.io.gfile.copy(os.path.join(local, file_name), os.path.join(tmp, file_name))
    finally:
      shutil.rmtree(local, ignore_errors=True)
    with tf.io.gfile.GFile(os.path.join(tmp, self.STATE), 'w') as f:
      f.write(state.to_json())
    final = os.path.join(self.directory, name)
    if tf.io.gfile.exists(final):
      tf.io.gfile.rmtree(final)
    tf.io.gfile.rename(tmp, final)
    for name in tf.io.gfile.listdir(self.directory):
      path = os.path.join(self.directory, name.rstrip('/'))
      if path != final and ('.tmp-' in name or self._NAME.match(name.rstrip('/'))):
        tf.io.gfile.rmtree(path)
    return final

  def newest_state(self) -> Optional[TrainingState]:
    """The newest complete backup's state (to rebuild the model it needs), or None."""
    for path in self._complete():
      try:
        with tf.io.gfile.GFile(os.path.join(path, self.STATE)) as f:
          return TrainingState.from_json(f.read())
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Backup %s: unreadable state (%s); trying an older one.', path, e)
    return None

  def restore(self, model: keras.Model, optimizer: Optional[keras.optimizers.Optimizer] = None,
              step: Optional[int] = None):
    """(state, best weights or None) from the newest backup that loads, or None.

    `optimizer`: a custom loop's (built) optimizer, restored from optimizer.npz.
    `step`: that backup only (the multi-worker path restores the chief's choice).
    """
    for path in self._complete():
      if step is not None and int(self._NAME.match(os.path.basename(path)).group(1)) != step:
        continue
      local = tempfile.mkdtemp(prefix='char-rnn-restore-')
      try:
        with tf.io.gfile.GFile(os.path.join(path, self.STATE)) as f:
          state = TrainingState.from_json(f.read())
        tf.io.gfile.copy(os.path.join(path, self.WEIGHTS), os.path.join(local, self.WEIGHTS))
        own = getattr(model, 'optimizer', None)   # a model never compiled has none
        if own is not None and not own.built:
          own.build(model.trainable_variables)     # so its slots load too
        model.load_weights(os.path.join(local, self.WEIGHTS))
        if optimizer is not None:
          slots = self._arrays(path, local, self.OPTIMIZER)
          if slots is None or len(slots) != len(optimizer.variables):
            raise ValueError(f'{self.OPTIMIZER} holds {0 if slots is None else len(slots)} '
                             f'arrays for the optimizer\'s {len(optimizer.variables)} variables')
          for variable, value in zip(optimizer.variables, slots):
            if tuple(variable.shape) != value.shape:
              raise ValueError(f'{self.OPTIMIZER}: {variable.path} is {tuple(variable.shape)} '
                               f'here, {value.shape} in the backup')
            variable.assign(value)
        return state, self._arrays(path, local, self.BEST)
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('Backup %s does not load (%s)%s', path, e,
                        '; trying an older one.' if step is None else '.')
      finally:
        shutil.rmtree(local, ignore_errors=True)
    return None

  @staticmethod
  def _arrays(path: str, local: str, file_name: str) -> Optional[List[np.ndarray]]:
    """The arrays of np.savez file `file_name` in backup `path` (copied to `local`), or None."""
    if not tf.io.gfile.exists(os.path.join(path, file_name)):
      return None
    tf.io.gfile.copy(os.path.join(path, file_name), os.path.join(local, file_name))
    with np.load(os.path.join(local, file_name)) as arrays:
      return [arrays[f'arr_{i}'] for i in range(len(arrays.files))]

  def delete(self) -> None:
    if tf.io.gfile.exists(self.directory):
      tf.io.gfile.rmtree(self.directory)

  def resumed(self, restored, clock: Clock):
    """(state, best weights, how training starts) for `restore`'s result: the
    state marked as resumed, and the time it had spent counted on `clock`."""
    state, best_weights = restored
    state.resumed_from_step = state.step
    clock.spent_before = state.elapsed_seconds
    return state, best_weights, (
        f'resumed from the backup at step {state.step} (epoch {state.epoch + 1}, '
        f'{state.elapsed_seconds:.0f} s already spent) in {self.directory}')


# -------------------------------------------------------------- progress
class Progress:
  """One updating line on a terminal; a log line every `every_seconds` otherwise."""

  def __init__(self, every_seconds: float, total_steps: int, epochs: int,
               stream=None, is_tty: Optional[bool] = None,
               log: Callable[[str], None] = lambda text: logging.info('%s', text)):
    self._stream = stream or sys.stdout
    self._log = log
    self._tty = self._stream.isatty() if is_tty is None else is_tty
    self._every = 0.5 if self._tty else every_seconds
    self._total_steps, self._epochs = total_steps, epochs
    self._last: Optional[float] = None
    self._open = False

  def line(self, step: int, epoch: int, loss: float, lr: float, elapsed: float,
           left: Optional[float]) -> str:
    budget = 'no time budget' if left is None else f'{max(left, 0):.0f} s of budget left'
    return (f'step {step}/{self._total_steps}  epoch {epoch + 1}/{self._epochs}  '
            f'loss {loss:.4f}  lr {lr:.3g}  {elapsed:.0f} s elapsed  {budget}')

  def step(self, now: float, *args) -> None:
    if self._last is not None and now - self._last < self._every:
      return
    self._last = now
    text = self.line(*args)
    if self._tty:
      self._stream.write('\r' + text.ljust(100))
      self._stream.flush()
      self._open = True
    else:
      self._log(text)

  def message(self, text: str) -> None:
    self.close()
    self._log(text)

  def close(self) -> None:
    if self._open:
      self._stream.write('\n')
      self._stream.flush()
      self._open = False


# --------------------------------------------------------------- monitor
class TrainingMonitor(keras.callbacks.Callback):
  """Steps, schedule, divergence, budget, early stopping, history and backups (see module doc).

  Place after the callback that produces the epoch's sample (`sampler`, with
  `last_sample` and `last_seconds`), so each epoch's record holds it.
  """

  def __init__(self, state: TrainingState, clock: Clock, budget: Budget, *,
               learning_rate: float, lr_schedule: str, min_lr_ratio: float,
               steps_per_epoch: int, epochs: int, divergence_ceiling: float,
               early_stopping_patience: int = 0, backup_every_steps: int = 0,
               store: Optional[BackupStore] = None, progress: Optional[Progress] = None,
               sampler: Any = None, best_weights: Optional[List[np.ndarray]] = None):
    super().__init__()
    self.state, self._clock, self.budget = state, clock, budget
    self._lr, self._schedule, self._min_ratio = learning_rate, lr_schedule, min_lr_ratio
    self._steps_per_epoch, self._epochs = steps_per_epoch, epochs
    self._ceiling, self._patience = divergence_ceiling, early_stopping_patience
    self._backup_every, self._store = backup_every_steps, store
    self._progress, self._sampler = progress, sampler
    self.best_weights = best_weights
    self._fit_batches, self._fit_sum = 0, 0.0
    self._batch_start = self._eval_start = None
    self._first_in_fit = True

  # -- helpers
  def current_lr(self) -> float:
    return learning_rate(self._lr, self._schedule, self._min_ratio, training_progress(
        self.state.step, self._steps_per_epoch * self._epochs, self._clock, self.budget))

  def _set_lr(self) -> float:
    lr = self.current_lr()
    self.model.optimizer.learning_rate.assign(lr)
    return lr

  def _stop(self, reason: str) -> None:
    if self.state.stop_reason is None:
      self.state.stop_reason = reason
    self.model.stop_training = True

  def _diverged(self, loss: float, what: str) -> None:
    why = divergence(loss, self._ceiling)
    if why is None:
      return
    self.state.stop_reason = STOP_DIVERGED
    if self._progress:
      self._progress.close()
    raise TrainingDivergedError(
        f'training diverged at step {self.state.step} (epoch {self.state.epoch + 1}): '
        f'{what} is {why}; lower learning_rate (now {self._lr:g}) or set clipnorm')

  def save_backup(self) -> None:
    if self._store is not None:
      self.state.elapsed_seconds = self._clock.elapsed()
      self._store.save(self.model, self.state, self.best_weights)

  # -- Keras hooks
  def on_train_begin(self, logs=None):
    self._first_in_fit = True
    self._set_lr()

  def on_epoch_begin(self, epoch, logs=None):
    self.state.epoch = epoch
    self._fit_batches, self._fit_sum = 0, 0.0

  def on_train_batch_begin(self, batch, logs=None):
    self._batch_start = self._clock.now()

  def on_train_batch_end(self, batch, logs=None):
    state = self.state
    seconds = self._clock.now() - self._batch_start
    if self._first_in_fit:
      self.budget.record_first_step(seconds)   # the first of all: traces train_function
    else:
      self.budget.record_step(seconds)
    self._first_in_fit = False
    # Keras reports the epoch's running mean; the step's own loss follows from it.
    mean = float(logs['loss'])
    self._fit_batches += 1
    total = mean * self._fit_batches
    step_loss = total - self._fit_sum
    self._fit_sum = total
    state.step += 1
    state.batch_in_epoch += 1
    state.epoch_loss_sum += step_loss
    self._diverged(mean, 'loss')
    lr = float(self.model.optimizer.learning_rate)
    elapsed = self._clock.elapsed()
    state.add_step_point(step_loss, lr, elapsed)
    next_lr = self._set_lr()
    if self.budget.exhausted():
      logging.info('Time budget: stopping after step %d (%.0f s elapsed, %.0f s reserved '
                   'for the last validation, sample and export).', state.step, elapsed,
                   self.budget.reserve())
      self._stop(STOP_TIME_BUDGET)
    if self._progress:
      self._progress.step(elapsed, state.step, state.epoch, mean, next_lr, elapsed,
                          self.budget.left())
    # The epoch's last step is backed up at the epoch's end, with its validation.
    if (self._backup_every and not self.model.stop_training
        and state.step % self._backup_every == 0
        and state.batch_in_epoch < self._steps_per_epoch):
      self.save_backup()

  def on_test_begin(self, logs=None):
    self._eval_start = self._clock.now()

  def on_test_end(self, logs=None):
    if self._eval_start is not None:
      self.budget.record_eval(self._clock.now() - self._eval_start)
    self._eval_start = None
    self._first_in_fit = True   # the next step's time includes the switch back

  def on_epoch_end(self, epoch, logs=None):
    state = self.state
    logs = logs or {}
    val_loss = logs.get('val_loss')
    loss = state.epoch_loss_sum / max(state.batch_in_epoch, 1)
    if val_loss is not None:
      self._diverged(float(val_loss), 'validation loss')
    sample = ''
    if self._sampler is not None:
      sample = self._sampler.last_sample or ''
      self.budget.record_sample(self._sampler.last_seconds)
    elapsed = self._clock.elapsed()
    state.epochs.append({'epoch': epoch + 1, 'loss': loss,
                         'val_loss': None if val_loss is None else float(val_loss),
                         'sample': sample, 'elapsed_seconds': elapsed})
    if self._progress:
      left = self.budget.left()
      self._progress.message(
          f'epoch {epoch + 1}/{self._epochs}: loss {loss:.4f}, val_loss '
          f'{float("nan") if val_loss is None else val_loss:.4f}, step {state.step}, '
          f'{elapsed:.0f} s elapsed' + ('' if left is None else f', {max(left, 0):.0f} s left'))
    if self._patience and val_loss is not None:
      if state.best_val_loss is None or val_loss < state.best_val_loss:
        state.best_val_loss, state.best_epoch, state.wait = float(val_loss), epoch + 1, 0
        self.best_weights = self.model.get_weights()
      else:
        state.wait += 1
        if state.wait >= self._patience:
          logging.info('Early stopping: val_loss has not improved for %d epochs (best %.4f '
                       'at epoch %d).', state.wait, state.best_val_loss, state.best_epoch)
          self._stop(STOP_EARLY_STOPPING)
    state.epoch, state.batch_in_epoch, state.epoch_loss_sum = epoch + 1, 0, 0.0
    if state.stop_reason is None and state.epoch >= self._epochs:
      state.stop_reason = STOP_EPOCHS
    elif state.stop_reason is None and self.budget.exhausted():
      logging.info('Time budget: stopping after epoch %d (%.0f s elapsed).', epoch + 1, elapsed)
      self._stop(STOP_TIME_BUDGET)
    self.save_backup()

  def on_train_end(self, logs=None):
    if self._progress:
      self._progress.close()
