"""Generation speed of two commits' servers side by side: does a serving change slow `generate`?

Why: a ratio to the tutorial loop is only comparable with another taken on the
same machine at the same moment (the machines are shared: two runs of the same
code minutes apart gave 7.5x and 3.2x at load 10-15). So this runs both servers
*at once* and interleaves them round by round with the tutorial loop:

  * both commits are checked out as git worktrees (`git worktree add --detach`,
    removed at the end; the new side is a worktree too, so nobody's uncommitted
    edits leak in) and each runs its own `python -m serving.server` from its own
    tree, on loopback, over the same SavedModel directory;
  * the SavedModel is exported once, as bench.generate does (GRU 1024,
    embedding 256, random weights: speed does not depend on them);
  * each round runs, in an order that alternates between rounds: gRPC `generate`
    at batch 1 and 64 on the old server, the same on the new one, and the
    tutorial's OneStep loop in-process (bench/tutorial.py); the client is
    serving.client for both (the wire protocol is TF Serving's; the client is
    not what is compared).

Ratios: chars/s of each side over the tutorial loop's chars/s, all from the
same rounds; new / old per batch (target: >= 0.95, not more than 5 % slower).

  .venv/bin/python -m bench.generate.compare --old 750ff3b [--new HEAD] [--rounds 6]
      [--chars 500] [--out bench/results/generate_hardening.json]
"""

import argparse
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List

if __package__ in (None, ''):   # `python bench/generate/compare.py`
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import tensorflow as tf

from bench import common
from bench.generate.run import free_port, tutorial_one_step
from components.model import build_keras_model, export_serving_model
from components.text import CharVocab
from serving.client import Client


def git(*args: str) -> str:
  return subprocess.run(['git', '-C', common.REPO_DIR, *args], check=True, capture_output=True,
                        text=True).stdout.strip()


def start_server(tree: str, base: str, log_path: str):
  port = free_port()
  env = dict(os.environ, PYTHONPATH=tree, TF_CPP_MIN_LOG_LEVEL='2', PYTHONWARNINGS='ignore')
  log = open(log_path, 'wb')
  server = subprocess.Popen(
      [sys.executable, '-m', 'serving.server', f'--port={port}', '--rest_api_port=0',
       '--host=127.0.0.1', '--model_name=char_rnn', f'--model_base_path={base}',
       '--file_system_poll_wait_seconds=0'],
      cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT)
  return server, port, log


def stop_server(server) -> None:
  if server.poll() is None:
    server.send_signal(signal.SIGTERM)
    try:
      server.wait(30)
    except subprocess.TimeoutExpired:
      server.kill()
      server.wait()


def main(argv=None) -> Dict[str, Any]:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--old', default='750ff3b', help='the commit before the change')
  p.add_argument('--new', default='HEAD', help='the commit with the change')
  p.add_argument('--rounds', type=int, default=6, help='interleaved rounds')
  p.add_argument('--chars', type=int, default=500, help='characters per prompt')
  p.add_argument('--batches', default='1,64')
  p.add_argument('--embedding-dim', type=int, default=256)
  p.add_argument('--rnn-units', type=int, default=1024)
  p.add_argument('--out', default=os.path.join(common.RESULTS_DIR, 'generate_hardening.json'))
  args = p.parse_args(argv)
  batches = [int(b) for b in args.batches.split(',')]
  run = common.Run('generate_hardening')
  commits = {'old': git('rev-parse', args.old), 'new': git('rev-parse', args.new)}

  work = tempfile.mkdtemp(prefix='bench_generate_compare_')
  trees = {side: os.path.join(work, side) for side in commits}
  servers: Dict[str, Any] = {}
  clients: Dict[str, Client] = {}
  seconds: Dict[str, List[float]] = {}     # mode -> seconds per run of `chars` chars
  try:
    for side, commit in commits.items():
      git('worktree', 'add', '--detach', trees[side], commit)
    with open(common.CORPUS_PATH, encoding='utf-8') as f:
      vocab = CharVocab.from_text(f.read())
    cfg = dict(embedding_dim=args.embedding_dim, rnn_type='gru', rnn_units=args.rnn_units,
               num_layers=1, dropout=0.0)
    tf.keras.utils.set_random_seed(0)
    keras_model = build_keras_model(len(vocab), **cfg)
    base = os.path.join(work, 'char_rnn')
    export_serving_model(keras_model, vocab.tokens, cfg, 10_000, os.path.join(base, '1'))
    one_step = tutorial_one_step(keras_model, vocab, args.embedding_dim, args.rnn_units)
    for side in commits:
      servers[side] = start_server(trees[side], base, os.path.join(work, f'{side}.log'))
    for side, (_, port, _) in servers.items():
      clients[side] = Client(f'127.0.0.1:{port}', timeout=600, retries=120, backoff=0.5,
                             max_backoff=2)
      clients[side].metadata()             # waits for the server

    def grpc_generate(side, batch, r):
      t = time.perf_counter()
      texts = clients[side].generate(['ROMEO:'] * batch, args.chars, 1.0, seed=r)
      dt = time.perf_counter() - t
      assert len(texts) == batch and all(len(x) == args.chars for x in texts)
      return dt

    def tutorial():
      states, next_char = None, tf.constant(['ROMEO:'])
      t = time.perf_counter()
      for _ in range(args.chars):
        next_char, states = one_step.generate_one_step(next_char, states=states)
        next_char.numpy()
      return time.perf_counter() - t

    steps = [(f'{side} grpc generate b{b}', lambda s=side, b=b, r=0: grpc_generate(s, b, r))
             for side in ('old', 'new') for b in batches]
    steps.append(('tutorial OneStep loop', lambda r=0: tutorial()))
    for _, fn in steps:                    # warm-up: traces, first allocations, connections
      fn()
    for r in range(args.rounds):
      order = steps if r % 2 == 0 else list(reversed(steps))
      for name, fn in order:
        seconds.setdefault(name, []).append(fn(r=r + 1))
      print(f'round {r + 1}: ' + ', '.join(
          f'{name} {args.chars * (int(name.rsplit("b", 1)[1]) if " b" in name else 1) / s[-1]:,.0f}'
          for name, s in seconds.items()) + ' chars/s', file=sys.stderr, flush=True)
  finally:
    for client in clients.values():
      client.close()
    for server, _, log in servers.values():
      stop_server(server)
      log.close()
    for tree in trees.values():
      if os.path.isdir(tree):
        subprocess.run(['git', '-C', common.REPO_DIR, 'worktree', 'remove', '--force', tree],
                       capture_output=True)
    shutil.rmtree(work, ignore_errors=True)

  def cps(name, batch):
    return args.chars * batch * len(seconds[name]) / sum(seconds[name])
  tutorial_cps = cps('tutorial OneStep loop', 1)
  rows, summary = [], {}
  for b in batches:
    old, new = cps(f'old grpc generate b{b}', b), cps(f'new grpc generate b{b}', b)
    # Per round too: the spread shows how much the load moved things.
    per_round = [(args.chars * b / n) / (args.chars * b / o) for o, n in zip(
        seconds[f'old grpc generate b{b}'], seconds[f'new grpc generate b{b}'])]
    summary[f'grpc generate b{b}'] = {
        'old_chars_per_s': old, 'new_chars_per_s': new,
        'old_x_tutorial': old / tutorial_cps, 'new_x_tutorial': new / tutorial_cps,
        'new_over_old': new / old,
        'new_over_old_per_round_median': statistics.median(per_round),
        'new_over_old_per_round': per_round,
        'within_5_percent_or_faster': new / old >= 0.95}
    rows.append({'mode': f'grpc generate b{b}', 'old': old / tutorial_cps,
                 'new': new / tutorial_cps, 'ratio': new / old,
                 'median': statistics.median(per_round),
                 'ok': 'yes' if new / old >= 0.95 else 'NO'})
  print(common.table(rows, ['mode', 'old', 'new', 'ratio', 'median', 'ok'],
                     ['mode', 'old x tutorial', 'new x tutorial', 'new / old',
                      'new / old (median of rounds)', '>= 0.95']))
  print(f'tutorial loop: {tutorial_cps:,.0f} chars/s')
  cores = os.cpu_count() or 1
  load = common.loadavg()
  path = run.write({
      'command': ' '.join(['.venv/bin/python -m bench.generate.compare'] +
                          [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)]),
      'old_commit': commits['old'], 'new_commit': commits['new'],
      'model': {**cfg, 'vocab_size': len(vocab), 'weights': 'random (Keras initializers, seed 0)'},
      'chars_per_prompt': args.chars, 'rounds': args.rounds,
      'method': 'both servers (each from its own git worktree) up at once over one SavedModel; '
                'rounds interleave old b1/b64, new b1/b64 and the tutorial loop, order '
                'reversed every other round; client: serving.client of this tree',
      'contention': (f'shared machine: load average {run.load_start[0]} at start, {load[0]} at '
                     f'end on {cores} cores; ratios come from the same interleaved rounds'),
      'tutorial_chars_per_s': tutorial_cps,
      'summary': summary,
      'seconds_per_run': seconds,
  }, args.out)
  print(f'wrote {path}', file=sys.stderr)
  return {'summary': summary, 'path': path}


if __name__ == '__main__':
  main()
