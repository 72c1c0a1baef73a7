"""Generation speed: one in-graph `generate` call vs character round trips vs the tutorial.

Why: the tutorial generates with a Python loop that calls a Keras `OneStep`
model once per character. We serve `generate`, which runs the whole loop inside
one graph call behind TF Serving's gRPC API. This measures, in one run on one
model (same weights for every path):

  * gRPC `generate` at batch 1, 8 and 64: 1000 characters per prompt, one request;
  * gRPC `stream`: 1000 `one_step` round trips, state carried by the client;
  * in-process `generate` signature (no gRPC), to show what the transport costs;
  * the tutorial's own loop: its `MyModel` + `OneStep.generate_one_step`
    (@tf.function) reproduced below, weights copied from the same Keras model.

The server is `python -m serving.server` in its own process, as deployed. Modes
run interleaved, round by round, so background load hits all of them alike.
Output: a Markdown table (stdout) and bench/results/generate.json.

  .venv/bin/python -m bench.generate            # or: .venv/bin/python bench/generate/run.py
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

if __package__ in (None, ''):   # `python bench/generate/run.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import numpy as np
import tensorflow as tf

from bench import common
from bench.tutorial import MyModel, OneStep
from components.model import build_keras_model, export_serving_model
from components.text import CharVocab
from serving.client import Client


# --------------------------------------------------------------------- tutorial
def tutorial_one_step(keras_model, vocab: CharVocab, embedding_dim: int, rnn_units: int):
  ids_from_chars = tf.keras.layers.StringLookup(vocabulary=vocab.chars, mask_token=None)
  chars_from_ids = tf.keras.layers.StringLookup(
      vocabulary=ids_from_chars.get_vocabulary(), invert=True, mask_token=None)
  assert ids_from_chars.get_vocabulary() == vocab.tokens   # same ids as our CharVocab
  model = MyModel(len(vocab), embedding_dim, rnn_units)
  model(tf.constant([[1]]))                                 # build
  model.embedding.set_weights(keras_model.get_layer('embedding').get_weights())
  model.gru.set_weights(keras_model.get_layer('rnn_0').get_weights())
  model.dense.set_weights(keras_model.get_layer('logits').get_weights())
  return OneStep(model, chars_from_ids, ids_from_chars)


# --------------------------------------------------------------------- measurement
def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def pct(values: List[float], q: float) -> float:
  return float(np.percentile(np.asarray(values), q))


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--chars', type=int, default=1000, help='characters per prompt')
  p.add_argument('--batches', default='1,8,64', help='generate batch sizes')
  p.add_argument('--rounds', type=int, default=5, help='interleaved rounds of every mode')
  p.add_argument('--step-rounds', type=int, default=2,
                 help='rounds of the per-character modes (stream, tutorial)')
  p.add_argument('--embedding-dim', type=int, default=256)
  p.add_argument('--rnn-units', type=int, default=1024)
  p.add_argument('--matmul-dtype', default='float32', choices=['float32', 'bfloat16'],
                 help="the export's matmul dtype (preset field serving_matmul_dtype)")
  p.add_argument('--out', default=None,
                 help='default: bench/results/generate.json (generate_bf16.json for bfloat16)')
  args = p.parse_args(argv)
  batches = [int(b) for b in args.batches.split(',')]
  args.out = args.out or os.path.join(
      common.RESULTS_DIR, 'generate.json' if args.matmul_dtype == 'float32' else 'generate_bf16.json')
  run = common.Run('generate')

  with open(common.CORPUS_PATH, encoding='utf-8') as f:
    vocab = CharVocab.from_text(f.read())
  cfg = dict(embedding_dim=args.embedding_dim, rnn_type='gru', rnn_units=args.rnn_units,
             num_layers=1, dropout=0.0)
  tf.keras.utils.set_random_seed(0)
  keras_model = build_keras_model(len(vocab), **cfg)   # Keras' random initial weights
  work = tempfile.mkdtemp(prefix='bench_generate_')
  base = os.path.join(work, 'char_rnn')
  export_serving_model(keras_model, vocab.tokens, cfg, 10_000, os.path.join(base, '1'),
                       matmul_dtype=args.matmul_dtype)
  in_process = tf.saved_model.load(os.path.join(base, '1')).signatures['generate']
  one_step = tutorial_one_step(keras_model, vocab, args.embedding_dim, args.rnn_units)

  port = free_port()
  server = subprocess.Popen(
      [sys.executable, '-m', 'serving.server', f'--port={port}', '--rest_api_port=0',
       '--host=127.0.0.1', '--model_name=char_rnn', f'--model_base_path={base}'],
      cwd=common.REPO_DIR, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  samples: Dict[str, List[float]] = {}     # mode -> request (or step) latencies, s
  totals: Dict[str, List[float]] = {}      # mode -> seconds per full `chars` run
  try:
    client = Client(f'127.0.0.1:{port}', timeout=600, retries=60, backoff=0.5, max_backoff=2)
    client.metadata()                      # waits for the server

    def grpc_generate(batch, r):
      t = time.perf_counter()
      texts = client.generate(['ROMEO:'] * batch, args.chars, 1.0, seed=r)
      dt = time.perf_counter() - t
      assert len(texts) == batch and all(len(x) == args.chars for x in texts)
      return [dt], dt

    def local_generate(batch, r):
      t = time.perf_counter()
      out = in_process(prompt=tf.constant(['ROMEO:'] * batch), num_chars=tf.constant(args.chars),
                       temperature=tf.constant(1.0), seed=tf.constant(r, tf.int64))
      out['text'].numpy()
      dt = time.perf_counter() - t
      return [dt], dt

    def stream(_batch, _r):
      steps, t0 = [], time.perf_counter()
      t = t0
      for _ in client.stream('ROMEO:', args.chars, 1.0):
        now = time.perf_counter()
        steps.append(now - t)
        t = now
      return steps, time.perf_counter() - t0

    def tutorial(_batch, _r):
      states, next_char = None, tf.constant(['ROMEO:'])
      steps, t0 = [], time.perf_counter()
      for _ in range(args.chars):
        t = time.perf_counter()
        next_char, states = one_step.generate_one_step(next_char, states=states)
        next_char.numpy()
        steps.append(time.perf_counter() - t)
      return steps, time.perf_counter() - t0

    modes = [(f'grpc generate b{b}', grpc_generate, b, args.rounds) for b in batches]
    modes += [('in-process generate b1', local_generate, 1, args.rounds),
              ('grpc stream (one_step round trips)', stream, 1, args.step_rounds),
              ('tutorial OneStep loop (in-process)', tutorial, 1, args.step_rounds)]
    # Warm-up: traces, first-call allocations, connection set-up.
    grpc_generate(1, 0)
    local_generate(1, 0)
    list(client.stream('ROMEO:', 5))
    one_step.generate_one_step(tf.constant(['ROMEO:']), states=None)
    tutorial_warm = one_step.generate_one_step(tf.constant(['R']), states=None)
    one_step.generate_one_step(tutorial_warm[0], states=tutorial_warm[1])

    for r in range(max(args.rounds, args.step_rounds)):
      for name, fn, batch, rounds in modes:
        if r < rounds:
          lat, total = fn(batch, r + 1)
          samples.setdefault(name, []).extend(lat)
          totals.setdefault(name, []).append(total)
          print(f'round {r + 1}: {name}: {args.chars * batch / total:,.0f} chars/s',
                file=sys.stderr, flush=True)
    client.close()
  finally:
    server.send_signal(signal.SIGTERM)
    try:
      server.wait(30)
    except subprocess.TimeoutExpired:
      server.kill()
    shutil.rmtree(work, ignore_errors=True)

  rows = []
  for name, _, batch, _ in modes:
    chars = args.chars * batch * len(totals[name])
    per_step = name.startswith(('grpc stream', 'tutorial'))
    rows.append({
        'mode': name, 'batch': batch,
        'chars_per_s': chars / sum(totals[name]),
        'latency_unit': 'per character' if per_step else f'per request ({args.chars} chars x batch)',
        'p50_ms': pct(samples[name], 50) * 1e3, 'p99_ms': pct(samples[name], 99) * 1e3,
        'seconds_per_1000_chars_per_prompt': float(np.median(totals[name])) * 1000 / args.chars,
        'runs': len(totals[name]), 'latency_samples': len(samples[name]),
    })
  tutorial_cps = next(r['chars_per_s'] for r in rows if r['mode'].startswith('tutorial'))
  for row in rows:
    row['x_tutorial'] = row['chars_per_s'] / tutorial_cps
  by_mode = {r['mode']: r for r in rows}
  targets = {
      'grpc generate b1 >= 4x tutorial': {
          'value': by_mode['grpc generate b1']['x_tutorial'], 'target': 4.0},
      'grpc generate b64 >= 20,000 chars/s': {
          'value': by_mode.get('grpc generate b64', {}).get('chars_per_s'), 'target': 20000.0},
  }
  for t in targets.values():
    t['met'] = t['value'] is not None and t['value'] >= t['target']

  print(common.table(rows, ['mode', 'batch', 'chars_per_s', 'x_tutorial', 'p50_ms', 'p99_ms',
                            'latency_unit'],
                     ['mode', 'batch', 'chars/s', 'x tutorial', 'p50 ms', 'p99 ms', 'latency of']))
  for name, t in targets.items():
    value = 'not measured' if t['value'] is None else f'{t["value"]:,.3g}'
    print(f'target {name}: {value} -> {"met" if t["met"] else "NOT met"}')
  load = common.loadavg()
  cores = os.cpu_count() or 1
  note = (f'load average {run.load_start[0]} at start, {load[0]} at end on {cores} cores: '
          'other jobs shared the CPU, absolute numbers are low; ratios are from the same '
          'interleaved rounds' if max(run.load_start[0], load[0]) > 0.5 * cores else
          'machine mostly idle')
  path = run.write({
      'model': {**cfg, 'vocab_size': len(vocab), 'matmul_dtype': args.matmul_dtype,
                'weights': 'random (Keras initializers, seed 0), untrained: speed does not '
                           'depend on the weights'},
      'chars_per_prompt': args.chars, 'rounds': args.rounds, 'step_rounds': args.step_rounds,
      'server': 'python -m serving.server (separate process, loopback gRPC)',
      'versions': common.versions('tensorflow', 'grpc', 'keras'),
      'contention': note, 'rows': rows, 'targets': targets,
  }, args.out)
  print(f'wrote {path}', file=sys.stderr)


if __name__ == '__main__':
  main()
