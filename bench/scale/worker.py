"""One (corpus, runner) measurement in its own process: prints `RESULT {json}`.

  python -m bench.scale.worker --runner direct1|direct2|dask2 --workdir D SOURCE...

Starts what the runner needs (for dask2 a loopback cluster, warmed up so the
workers' TensorFlow import is not timed), then times CorpusIngest's `ingest()`
and WindowGen's executor (VocabularyGen in between, single-process), while a
thread polls the RSS of this process and every descendant (Beam's worker
subprocesses, the Dask nannies and workers) and keeps each one's peak.
"""

import argparse
import contextlib
import json
import os
import shutil
import sys
import threading
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

RUNNERS = {
    'direct1': ['--direct_running_mode=in_memory', '--direct_num_workers=1'],
    'direct2': ['--direct_running_mode=multi_processing', '--direct_num_workers=2'],
    'dask2': [],    # + dask_runner.beam_args(address)
}


class PerProcessPeak:
  """Peak RSS of each process in this process' tree, polled every `interval` s."""

  def __init__(self, interval: float = 0.1):
    import psutil  # pylint: disable=g-import-not-at-top
    self._psutil = psutil
    self._me = psutil.Process()
    self._interval = interval
    self._stop = threading.Event()
    self.peaks = {}          # pid -> (name, peak bytes)
    self._thread = threading.Thread(target=self._run, daemon=True)

  def _sample(self):
    try:
      procs = [self._me] + self._me.children(recursive=True)
    except self._psutil.Error:
      return
    for p in procs:
      try:
        rss = p.memory_info().rss
        name = 'driver' if p.pid == self._me.pid else ' '.join(p.cmdline()[1:4])[:80]
      except self._psutil.Error:
        continue
      if rss > self.peaks.get(p.pid, ('', 0))[1]:
        self.peaks[p.pid] = (name, rss)

  def _run(self):
    while not self._stop.is_set():
      self._sample()
      self._stop.wait(self._interval)

  def reset(self):
    self.peaks = {}

  def __enter__(self):
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()

  def summary(self):
    mib = lambda b: round(b / 2**20, 1)
    driver = [v for k, v in self.peaks.items() if v[0] == 'driver']
    others = [v[1] for k, v in self.peaks.items() if v[0] != 'driver']
    return {'driver_peak_mib': mib(driver[0][1]) if driver else None,
            'worker_peak_mib': mib(max(others)) if others else None,
            'processes': len(self.peaks)}


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--runner', choices=sorted(RUNNERS), required=True)
  p.add_argument('--workdir', required=True)
  p.add_argument('--seq_length', type=int, default=100)
  p.add_argument('--shard_chars', type=int, default=4_000_000)
  p.add_argument('sources', nargs='+')
  args = p.parse_args()

  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from bench.windowing import stages
  from components import corpus_ingest, dask_runner
  from pipeline.dask_cluster import loopback_cluster

  setup_file = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), 'setup.py')
  out = {'runner': args.runner}
  with contextlib.ExitStack() as stack:
    beam_args = list(RUNNERS[args.runner])
    if args.runner == 'dask2':
      t = time.perf_counter()
      address = stack.enter_context(loopback_cluster(workers=2))
      from distributed import Client  # pylint: disable=g-import-not-at-top
      with Client(address) as client:
        client.run(lambda: __import__('components.window_gen') and
                   __import__('components.corpus_ingest'))
      out['cluster_start_seconds'] = round(time.perf_counter() - t, 1)
      beam_args += dask_runner.beam_args(address)
    # --setup_file: spares TFX building an sdist of itself per Beam executor.
    beam_args.append(f'--setup_file={setup_file}')
    peaks = stack.enter_context(PerProcessPeak())

    corpus = stages.corpus_dir(args.workdir)
    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(corpus)
    source_bytes = sum(os.path.getsize(s) for s in args.sources)
    t = time.perf_counter()
    num_chars, _, shards = corpus_ingest.ingest(
        args.sources, corpus, seq_length=args.seq_length, eval_fraction=0.1,
        shard_chars=args.shard_chars, normalization='NFC',
        make_pipeline=lambda: beam.Pipeline(argv=beam_args))
    seconds = time.perf_counter() - t
    out['ingest'] = dict(seconds=round(seconds, 2), mb_per_s=round(source_bytes / 1e6 / seconds, 1),
                         source_mb=round(source_bytes / 1e6, 1), num_chars=num_chars,
                         shards=len(shards), **peaks.summary())
    peaks.reset()
    t = time.perf_counter()
    out['vocab_size'] = stages.run_vocabulary(args.workdir)
    out['vocab_seconds'] = round(time.perf_counter() - t, 2)
    corpus_bytes = sum(s['num_bytes'] for s in shards)
    peaks.reset()
    t = time.perf_counter()
    windows = stages.run_windows(args.workdir, args.seq_length, args.seq_length, 0.1, beam_args)
    seconds = time.perf_counter() - t
    out['window'] = dict(seconds=round(seconds, 2), mb_per_s=round(corpus_bytes / 1e6 / seconds, 1),
                         windows=sum(windows.values()), **peaks.summary())
  shutil.rmtree(args.workdir, ignore_errors=True)
  sys.stdout.flush()
  print('RESULT ' + json.dumps(out), flush=True)


if __name__ == '__main__':
  main()
