"""One side of bench.quality in a process of its own:

  python -m bench.quality.side pipeline '{"preset": "cpu", ...}' RESULT.json
  python -m bench.quality.side peer '{"artifacts": {...}, "budget_seconds": 300}' RESULT.json

`tfx run create` starts a fresh Python process for every run, so bench.quality
runs each pipeline and each peer in one too (its default): no run inherits the
threads, traced functions or memory of the runs before it. The result (what
run_pipeline / run_peer return, less the peer's eval windows, which the parent
reads itself) is written as JSON, atomically: no file means the side failed.
"""

import json
import os
import sys


def main(argv) -> int:
  if len(argv) != 4 or argv[1] not in ('pipeline', 'peer'):
    print(__doc__, file=sys.stderr)
    return 2
  side, kwargs, path = argv[1], json.loads(argv[2]), argv[3]
  from bench.quality import __main__ as quality  # pylint: disable=g-import-not-at-top
  if side == 'pipeline':
    row, detail, artifacts = quality.run_pipeline(**kwargs)
    result = {'row': row, 'detail': detail, 'artifacts': artifacts}
  else:
    row, detail, _, _ = quality.run_peer(**kwargs)
    result = {'row': row, 'detail': detail}
  partial = path + '.partial'
  with open(partial, 'w') as f:
    json.dump(result, f)
  os.replace(partial, path)
  return 0


if __name__ == '__main__':
  sys.exit(main(sys.argv))
