"""A dask.distributed cluster on loopback for Beam's Dask runner, and a wrapper that uses it.

  python -m pipeline.dask_cluster [--workers=2] [--address=tcp://HOST:PORT] -- COMMAND...

starts a scheduler and `--workers` worker processes (one thread each) on
127.0.0.1, runs COMMAND with CHAR_RNN_BEAM_ARGS naming the cluster
(`--runner=components.dask_runner.DaskRunner --dask_client_address=...`,
appended to any CHAR_RNN_BEAM_ARGS already set), and stops the cluster when
COMMAND ends, whatever its exit status, which it returns. With `--address`
no cluster is started: the command runs against that existing scheduler.
`make run BEAM=dask` / `make pipeline BEAM=dask` is this around the local runner.

`loopback_cluster()` is the same cluster as a context manager, for tests and
benchmarks. Workers import the project from the installed package (the
editable install `make install` does), so their code is the driver's.
"""

import argparse
import asyncio
import contextlib
import logging
import os
import shlex
import subprocess
import sys
from typing import Iterator, List, Optional

from components import dask_runner


@contextlib.contextmanager
def loopback_cluster(workers: int = 2, memory_limit: Optional[str] = None) -> Iterator[str]:
  """Yields the scheduler address of a fresh cluster of `workers` processes on 127.0.0.1."""
  from distributed import LocalCluster  # pylint: disable=g-import-not-at-top
  kwargs = {} if memory_limit is None else {'memory_limit': memory_limit}
  cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         host='127.0.0.1', dashboard_address=None, **kwargs)
  try:
    yield cluster.scheduler_address
  finally:
    try:
      cluster.close(timeout=60)
    except (asyncio.TimeoutError, TimeoutError) as e:
      # On a loaded machine a worker may not stop in time; its nanny kills it
      # (SIGKILL) either way, so the cluster is gone: say so, do not fail.
      logging.warning('dask cluster: workers were killed, not stopped (%r)', e)


def run_with_cluster(command: List[str], workers: int = 2, address: Optional[str] = None) -> int:
  """Runs `command` with CHAR_RNN_BEAM_ARGS pointing at a (new or given) Dask scheduler."""
  with contextlib.ExitStack() as stack:
    if address is None:
      address = stack.enter_context(loopback_cluster(workers))
      print(f'dask_cluster: scheduler {address} with {workers} worker processes', flush=True)
    env = dict(os.environ)
    args = shlex.split(env.get('CHAR_RNN_BEAM_ARGS', '')) + dask_runner.beam_args(address)
    env['CHAR_RNN_BEAM_ARGS'] = shlex.join(args)
    return subprocess.run(command, env=env, check=False).returncode


def main(argv: Optional[List[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--workers', type=int, default=2, help='worker processes to start')
  parser.add_argument('--address', default='',
                      help='an existing scheduler (tcp://HOST:PORT): start no cluster')
  parser.add_argument('command', nargs=argparse.REMAINDER, help='-- COMMAND ARGS...')
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('give the command to run after --')
  if args.workers < 1:
    parser.error('--workers must be at least 1')
  return run_with_cluster(command, args.workers, args.address or None)


if __name__ == '__main__':
  sys.exit(main())
