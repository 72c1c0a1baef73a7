"""One stage in its own process (so its peak memory is its own): prints a JSON line.

  python -m bench.windowing.worker ingest|vocab|window WORKDIR [--source F]
      [--beam_args '...'] [--write_task components]
"""

import argparse
import json
import os
import shlex
import sys
import time

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def main():
  p = argparse.ArgumentParser()
  p.add_argument('stage', choices=['ingest', 'vocab', 'window'])
  p.add_argument('workdir')
  p.add_argument('--source')
  p.add_argument('--seq_length', type=int, default=100)
  p.add_argument('--stride', type=int, default=100)
  p.add_argument('--beam_args', default='--direct_running_mode=in_memory --direct_num_workers=1')
  p.add_argument('--write_task', default='components', choices=['components'])
  p.add_argument('--examples_subdir', default='examples')
  args = p.parse_args()

  t_import = time.perf_counter()
  import resource
  from bench.windowing import stages
  stages_examples = stages.examples_dir
  stages.examples_dir = lambda w: os.path.join(w, args.examples_subdir)
  import_s = time.perf_counter() - t_import

  t0 = time.perf_counter()
  out = {'stage': args.stage}
  if args.stage == 'ingest':
    out['num_chars'] = stages.run_ingest([args.source], args.workdir, args.seq_length)
  elif args.stage == 'vocab':
    out['vocab_size'] = stages.run_vocabulary(args.workdir)
  else:
    out['windows'] = stages.run_windows(args.workdir, args.seq_length, args.stride, 0.1,
                                        shlex.split(args.beam_args))
  out['seconds'] = time.perf_counter() - t0
  out['import_seconds'] = import_s
  ru_self = resource.getrusage(resource.RUSAGE_SELF)
  ru_children = resource.getrusage(resource.RUSAGE_CHILDREN)
  out['maxrss_self_mib'] = round(ru_self.ru_maxrss / 1024, 1)
  out['maxrss_children_mib'] = round(ru_children.ru_maxrss / 1024, 1)
  out['cpu_seconds'] = round(ru_self.ru_utime + ru_self.ru_stime + ru_children.ru_utime
                             + ru_children.ru_stime, 1)
  sys.stdout.flush()
  print('RESULT ' + json.dumps(out), flush=True)


if __name__ == '__main__':
  main()
