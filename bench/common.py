"""Helpers shared by the benchmarks: machine description, load, JSON results, tables.

Every benchmark writes `bench/results/<name>.json` through `write_result`, which
stamps the date, the machine, the exact command and the load averages, so a
number is never read without the conditions it was taken under. The machines
are shared (two cores, other people's tests), so benchmarks measure the sides
they compare in the same run, interleaved where practical, and report ratios.
"""

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Sequence

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(BENCH_DIR)
RESULTS_DIR = os.path.join(BENCH_DIR, 'results')
CORPUS_PATH = os.path.join(REPO_DIR, 'data', 'tinyshakespeare.txt')
NO_GPU_NOTE = 'no GPU available this session'


def _cpuinfo() -> Dict[str, Any]:
  model, flags, mhz = platform.processor() or 'unknown', [], None
  # A VM's model name is often just 'AMD EPYC': the family tells Zen 3/4 (25) from Zen 5 (26).
  family = model_id = None
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        key, _, value = line.partition(':')
        key, value = key.strip(), value.strip()
        if key == 'model name':
          model = value
        elif key == 'flags' and not flags:
          flags = value.split()
        elif key == 'cpu MHz' and mhz is None:
          mhz = float(value)
        elif key == 'cpu family' and family is None:
          family = int(value)
        elif key == 'model' and model_id is None:
          model_id = int(value)
  except OSError:
    pass
  simd = [f for f in ('avx2', 'fma', 'avx512f', 'avx512_bf16', 'amx_bf16', 'amx_tile')
          if f in flags]
  return {'cpu_model': model, 'cpu_family': family, 'cpu_model_id': model_id, 'cpu_mhz': mhz,
          'simd': simd}


def _mem_total_gib() -> Optional[float]:
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemTotal:'):
          return round(int(line.split()[1]) / 2**20, 1)
  except OSError:
    pass
  return None


def gpu_description() -> str:
  """nvidia-smi's names, or the fixed note that this session has no GPU."""
  try:
    out = subprocess.run(['nvidia-smi', '--query-gpu=name', '--format=csv,noheader'],
                         capture_output=True, text=True, timeout=10)
    if out.returncode == 0 and out.stdout.strip():
      return out.stdout.strip().replace('\n', ', ')
  except (OSError, subprocess.SubprocessError):
    pass
  return NO_GPU_NOTE


def machine() -> Dict[str, Any]:
  info = _cpuinfo()
  info.update({
      'cores': os.cpu_count(),
      'memory_gib': _mem_total_gib(),
      'gpu': gpu_description(),
      'python': platform.python_version(),
      'platform': platform.platform(),
  })
  return info


def machine_line(m: Optional[Dict[str, Any]] = None) -> str:
  m = m or machine()
  return f"{m['cpu_model']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['gpu']}"


def loadavg() -> List[float]:
  return [round(x, 2) for x in os.getloadavg()]


def command() -> str:
  """The command line that ran this benchmark, as one would type it again."""
  argv = list(sys.argv)
  if argv and argv[0].endswith('__main__.py'):
    module = os.path.relpath(os.path.dirname(argv[0]), REPO_DIR).replace(os.sep, '.')
    argv = ['-m', module] + argv[1:]
  return ' '.join(['.venv/bin/python'] + [shlex.quote(a) for a in argv])


def versions(*modules: str) -> Dict[str, str]:
  out = {}
  for name in modules:
    try:
      out[name] = __import__(name).__version__
    except Exception:  # pylint: disable=broad-except
      pass
  return out


def code_version() -> Optional[str]:
  """The commit the benchmark ran (plus '+changes' when the tree differs), or None."""
  try:
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=REPO_DIR, check=True,
                            capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'],
                           cwd=REPO_DIR, check=True, capture_output=True, text=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return None
  return commit + ('+changes' if dirty.strip() else '')


class Run:
  """One benchmark run: stamps start/end conditions and writes the JSON."""

  def __init__(self, name: str):
    self.name = name
    self.code_version = code_version()     # at the start: what ran
    self.started = datetime.datetime.now(datetime.timezone.utc)
    self.t0 = time.monotonic()
    self.load_start = loadavg()

  def write(self, results: Dict[str, Any], path: Optional[str] = None) -> str:
    payload = {
        'benchmark': self.name,
        'date': self.started.isoformat(timespec='seconds'),
        'command': command(),
        'code_version': self.code_version,
        'machine': machine(),
        'loadavg_start': self.load_start,
        'loadavg_end': loadavg(),
        'wall_seconds': round(time.monotonic() - self.t0, 1),
    }
    payload.update(results)
    path = path or os.path.join(RESULTS_DIR, f'{self.name}.json')
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
      json.dump(payload, f, indent=1, default=str)
      f.write('\n')
    os.replace(tmp, path)
    return path


def table(rows: Sequence[Dict[str, Any]], columns: Sequence[str],
          headers: Optional[Sequence[str]] = None, markdown: bool = True) -> str:
  """Rows of dicts -> a Markdown (or plain) table; floats get 3 significant-ish digits."""
  def fmt(v):
    if v is None:
      return '-'
    if isinstance(v, float):
      return f'{v:.3g}' if abs(v) < 100 else f'{v:,.0f}'
    return str(v)
  headers = list(headers or columns)
  cells = [[fmt(r.get(c)) for c in columns] for r in rows]
  widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
            for i, h in enumerate(headers)]
  def line(values):
    return '| ' + ' | '.join(v.ljust(w) for v, w in zip(values, widths)) + ' |'
  out = [line(headers)]
  out.append('|' + '|'.join('-' * (w + 2) for w in widths) + '|')
  out.extend(line(c) for c in cells)
  return '\n'.join(out)


class PeakRss:
  """Polls the RSS of a process and all its descendants in a thread; keeps the peak.

  Summing RSS double-counts shared pages (the Python and TF libraries each
  worker maps), so it is an upper bound: what matters here is whether it grows
  with the input.
  """

  def __init__(self, pid: Optional[int] = None, interval: float = 0.05):
    import psutil  # pylint: disable=g-import-not-at-top
    self._psutil = psutil
    self._proc = psutil.Process(pid or os.getpid())
    self._interval = interval
    self._stop = threading.Event()
    self.peak_bytes = 0
    self.peak_processes = 0
    self._thread = threading.Thread(target=self._poll, daemon=True)

  def _sample(self) -> None:
    total, count = 0, 0
    try:
      procs = [self._proc] + self._proc.children(recursive=True)
    except self._psutil.Error:
      return
    for p in procs:
      try:
        total += p.memory_info().rss
        count += 1
      except self._psutil.Error:
        pass
    if total > self.peak_bytes:
      self.peak_bytes = total
    self.peak_processes = max(self.peak_processes, count)

  def _poll(self) -> None:
    while not self._stop.is_set():
      self._sample()
      self._stop.wait(self._interval)

  def __enter__(self) -> 'PeakRss':
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._stop.set()
    self._thread.join()
    self._sample()

  @property
  def peak_mib(self) -> float:
    return round(self.peak_bytes / 2**20, 1)
