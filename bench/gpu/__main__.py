"""The `tutorial` preset on a GPU: seconds per epoch, eval loss, and the export contract.

Issue 13 asks for these figures whenever a GPU is lent. The machine this workplace lends
some sessions (one NVIDIA H200, bench/gpu/device.sh says what it runs) has Python 3.12,
PyTorch and JAX but no TensorFlow, reaches no package index, and takes at most 64 MiB of
carried files, while TensorFlow is 1.7 GB installed. So the GPU trains the preset's model
with Keras 3 on JAX (the same Keras version as .venv, from carried wheels): the same
architecture code (components/keras_model.py), the same settings (pipeline/configs.py's
`tutorial`, checked here) and the same windows (examples_format's split and stride, as
WindowGen cuts them). The weights come back, and TensorFlow on this CPU does the rest as
the pipeline would: the gate's score of the exported model, and tests/test_model.py's
export contract run against that export.

  1. here:    .venv/bin/python -m bench.gpu prepare            # .gpu/: windows, settings, wheels
  2. device:  run(command='bash bench/gpu/device.sh', carry=['.gpu'], timeout_s=300)
  3. here:    .venv/bin/python -m bench.gpu check <the run's files_at folder>

`check` writes bench/results/gpu_tutorial.json and prints the row. What this does not
exercise on the GPU: TensorFlow's cuDNN GRU and the TFX Trainer (`make run
PRESET=tutorial` on a GPU machine with TensorFlow does); Keras on JAX runs the GRU as a
`lax.scan`, so its seconds per epoch are JAX's, not TensorFlow's.

`train` runs under any Keras backend (tests/test_bench_gpu.py runs all three steps on the
CPU with TensorFlow's), and imports nothing of TensorFlow itself.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict

import numpy as np

from bench import common

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA_DIR = os.path.join(REPO, '.gpu')
DATA_FILE = 'tutorial.npz'
SETTINGS_FILE = 'settings.json'
WEIGHTS_FILE = 'model.weights.h5'
HISTORY_FILE = 'history.json'
# What Keras needs beyond the device's own packages (numpy, h5py, ml-dtypes, rich,
# absl-py and packaging are there); versions as .venv has them.
WHEELS = ('keras', 'namex', 'optree')
TARGET_LOSS = 1.45   # nats/char, issue 13


# ------------------------------------------------------------------- prepare
def prepare(corpus: str, overrides: str, out_dir: str, python_version: str,
            wheels: bool = True) -> Dict[str, Any]:
  """Windows of the corpus as WindowGen cuts them for the preset, its checked settings,
  and the Keras wheels the device installs."""
  from components import examples_format  # pylint: disable=g-import-not-at-top
  from components.text import CharVocab  # pylint: disable=g-import-not-at-top
  from pipeline import configs  # pylint: disable=g-import-not-at-top

  preset = configs.get_preset('tutorial', overrides)
  with open(corpus, encoding='utf-8') as f:
    text = f.read()
  vocab = CharVocab.from_text(text)
  ids = vocab.encode(text).astype(np.uint8 if len(vocab) <= 256 else np.int32)
  window, stride = preset.seq_length + 1, preset.window_stride
  boundary = examples_format.split_boundary(len(ids), preset.eval_fraction)

  def windows(start, end):
    starts = np.array(examples_format.window_starts(start, end, window, stride, start, end))
    return ids[starts[:, None] + np.arange(window)]

  os.makedirs(out_dir, exist_ok=True)
  np.savez(os.path.join(out_dir, DATA_FILE), train=windows(0, boundary),
           eval=windows(boundary, len(ids)))
  settings = {'preset': 'tutorial', 'overrides': overrides, 'corpus': corpus,
              'tokens': vocab.tokens, 'training': preset.training_config(),
              'max_eval_loss_ratio': preset.max_eval_loss_ratio}
  with open(os.path.join(out_dir, SETTINGS_FILE), 'w') as f:
    json.dump(settings, f)
  if wheels:
    import importlib.metadata  # pylint: disable=g-import-not-at-top
    versions = {name: importlib.metadata.version(name) for name in WHEELS}
    wheel_dir = os.path.join(out_dir, 'wheels')
    subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps',
                    '--only-binary=:all:', '--python-version', python_version,
                    '--implementation', 'cp', '--platform', 'manylinux_2_28_x86_64',
                    '--platform', 'manylinux_2_17_x86_64', '--platform', 'manylinux2014_x86_64',
                    '-d', wheel_dir] + [f'{name}=={versions[name]}' for name in WHEELS],
                   check=True)
  return settings


# --------------------------------------------------------------------- train
def train(data_dir: str, out_dir: str) -> Dict[str, Any]:
  """The preset's training (run_fn's recipe without TFX): every epoch a fresh shuffle
  of the train windows in full batches, validation over every eval window."""
  import keras  # pylint: disable=g-import-not-at-top
  from components.keras_model import MODEL_CONFIG_KEYS, build_keras_model, build_optimizer  # pylint: disable=g-import-not-at-top

  with open(os.path.join(data_dir, SETTINGS_FILE)) as f:
    settings = json.load(f)
  cfg = settings['training']
  data = np.load(os.path.join(data_dir, DATA_FILE))
  train_windows, eval_windows = data['train'].astype(np.int32), data['eval'].astype(np.int32)
  if cfg['precision'] not in ('auto', 'float32'):
    # `auto` is float32 on a GPU, as training.resolve_precision decides there.
    keras.mixed_precision.set_global_policy(cfg['precision'])
  seed = cfg['seed'] if cfg['seed'] is not None else 0
  keras.utils.set_random_seed(seed)
  model = build_keras_model(len(settings['tokens']), **{k: cfg[k] for k in MODEL_CONFIG_KEYS})
  model.compile(optimizer=build_optimizer(cfg['learning_rate'], cfg['clipnorm'],
                                          cfg['weight_decay']),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  batch = cfg['batch_size']
  steps = cfg['steps_per_epoch'] or len(train_windows) // batch
  rng = np.random.default_rng(seed)
  # Seconds of each epoch, validation included (the first also compiles the step).
  epoch_seconds, history = [], {'loss': [], 'val_loss': []}
  os.makedirs(out_dir, exist_ok=True)
  result = {
      'settings': settings, 'history': history, 'epoch_seconds': epoch_seconds,
      'steps_per_epoch': steps, 'keras_backend': keras.backend.backend(),
      'versions': common.versions('keras', 'jax', 'jaxlib', 'numpy'),
      'devices': _devices(keras.backend.backend()), 'machine': common.machine(),
  }
  for epoch in range(cfg['epochs']):
    started = time.perf_counter()
    order = rng.permutation(len(train_windows))[:steps * batch]
    picked = train_windows[order]
    fit = model.fit(picked[:, :-1], picked[:, 1:], batch_size=batch, epochs=epoch + 1,
                    initial_epoch=epoch, shuffle=False, verbose=0,
                    validation_data=(eval_windows[:, :-1], eval_windows[:, 1:]),
                    validation_batch_size=batch)
    epoch_seconds.append(time.perf_counter() - started)
    for key in history:
      history[key].append(float(fit.history[key][-1]))
    print(f'epoch {epoch + 1}/{cfg["epochs"]}: loss {history["loss"][-1]:.4f}, '
          f'val_loss {history["val_loss"][-1]:.4f}, {epoch_seconds[-1]:.1f} s', flush=True)
    # After every epoch: a run stopped at the device's time limit still reports its epochs.
    _write_json(os.path.join(out_dir, HISTORY_FILE), dict(result, complete=False))
  model.save_weights(os.path.join(out_dir, WEIGHTS_FILE))
  result['complete'] = True    # `check` takes only a finished run
  _write_json(os.path.join(out_dir, HISTORY_FILE), result)
  return result


def _write_json(path: str, payload: Dict[str, Any]) -> None:
  with open(path + '.partial', 'w') as f:
    json.dump(payload, f, indent=1)
  os.replace(path + '.partial', path)


def _devices(backend: str):
  if backend == 'jax':
    import jax  # pylint: disable=g-import-not-at-top
    return [str(d) for d in jax.devices()]
  return []


# --------------------------------------------------------------------- check
def check(run_dir: str, data_dir: str, export_dir: str, output: str) -> Dict[str, Any]:
  """Scores the trained weights as the gate does, exports them as the Trainer does and
  runs the export contract (tests/test_model.py) against that export."""
  from bench.quality import __main__ as quality  # pylint: disable=g-import-not-at-top
  from components import evaluation_gate, model as model_lib, trainer_module  # pylint: disable=g-import-not-at-top
  from components.text import CharVocab  # pylint: disable=g-import-not-at-top
  from components.training_config import TrainingConfig  # pylint: disable=g-import-not-at-top

  if os.path.exists(export_dir) and os.listdir(export_dir):
    raise SystemExit(f'{export_dir} is not empty: give --export-dir a new directory')
  run = common.Run('gpu_tutorial')
  with open(os.path.join(run_dir, HISTORY_FILE)) as f:
    trained = json.load(f)
  if not trained.get('complete'):
    raise SystemExit(f'{run_dir}: training stopped after {len(trained["epoch_seconds"])} of '
                     f'{trained["settings"]["training"]["epochs"]} epochs (no weights to check)')
  settings, cfg = trained['settings'], trained['settings']['training']
  vocab = CharVocab(settings['tokens'])
  model_config = {k: cfg[k] for k in model_lib.MODEL_CONFIG_KEYS}
  model = model_lib.build_keras_model(len(vocab), **model_config)
  model.load_weights(os.path.join(run_dir, WEIGHTS_FILE))
  eval_windows = np.load(os.path.join(data_dir, DATA_FILE))['eval'].astype(np.int32)

  extra = trainer_module.write_serving_model(
      export_dir, model, vocab, model_config, TrainingConfig.from_custom_config(cfg))
  texts = [vocab.decode(w) for w in eval_windows]
  gate_loss = evaluation_gate.eval_loss(export_dir, texts)
  threshold = settings['max_eval_loss_ratio'] * evaluation_gate.unigram_entropy(texts)
  with open(os.path.join(extra, trainer_module.METRICS_FILE), 'w') as f:
    json.dump({'eval_loss': gate_loss, 'config': cfg, 'trained_on': trained['devices'],
               'keras_backend': trained['keras_backend']}, f, indent=1)
  contract = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-n', '0', '-p', 'no:cacheprovider',
       os.path.join(REPO, 'tests', 'test_model.py')],
      cwd=REPO, env=dict(os.environ, CHAR_RNN_CONTRACT_EXPORT=export_dir),
      capture_output=True, text=True)
  summary = (contract.stdout.strip().splitlines() or [''])[-1]
  seconds = trained['epoch_seconds']
  row = {
      'device': ', '.join(trained['devices']) or trained['machine']['gpu'],
      'keras_backend': trained['keras_backend'],
      'epochs': len(seconds), 'steps_per_epoch': trained['steps_per_epoch'],
      'first_epoch_seconds': round(seconds[0], 2),
      'epoch_seconds_after_first': round(float(np.median(seconds[1:])), 2) if len(seconds) > 1
                                   else None,
      'eval_loss': gate_loss,
      'keras_eval_loss': quality.score(model, eval_windows),
      'last_val_loss': trained['history']['val_loss'][-1],
      'gate_threshold': threshold, 'blessed': gate_loss <= threshold,
      'target_nats_per_char': TARGET_LOSS, 'target_met': gate_loss <= TARGET_LOSS,
      'contract': summary, 'contract_passed': contract.returncode == 0,
  }
  run.write({'row': row, 'trained': trained, 'export_dir': export_dir,
             'contract_output': contract.stdout[-4000:] + contract.stderr[-2000:]}, output)
  print(common.table([row], list(row)))
  if contract.returncode:
    print(contract.stdout[-4000:], contract.stderr[-2000:], file=sys.stderr)
  return row


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  sub = parser.add_subparsers(dest='step', required=True)
  p = sub.add_parser('prepare', help='here: windows, settings and Keras wheels into .gpu/')
  p.add_argument('--corpus', default=os.path.join(REPO, 'data', 'tinyshakespeare.txt'))
  p.add_argument('--overrides', default='', help='preset overrides, as CHAR_RNN_OVERRIDES')
  p.add_argument('--out', default=DATA_DIR)
  p.add_argument('--python-version', default='3.12', help="the device's Python")
  p.add_argument('--no-wheels', dest='wheels', action='store_false')
  t = sub.add_parser('train', help='on the device (any Keras backend): weights + history')
  t.add_argument('--data', default=DATA_DIR)
  t.add_argument('--out', required=True)
  c = sub.add_parser('check', help='here: gate score, export, contract; writes the results')
  c.add_argument('run_dir', help="train's --out (the device run's files_at folder)")
  c.add_argument('--data', default=DATA_DIR, help="prepare's --out (the eval windows)")
  c.add_argument('--export-dir', default=os.path.join(
      REPO, 'outputs', 'gpu_tutorial', time.strftime('%Y%m%dT%H%M%S'), 'Format-Serving'))
  c.add_argument('--output', default=os.path.join(common.RESULTS_DIR, 'gpu_tutorial.json'))
  a = parser.parse_args()
  if a.step == 'prepare':
    prepare(a.corpus, a.overrides, a.out, a.python_version, a.wheels)
    print(f'written to {a.out}')
  elif a.step == 'train':
    train(a.data, a.out)
  else:
    row = check(a.run_dir, a.data, a.export_dir, a.output)
    return 0 if row['contract_passed'] else 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
