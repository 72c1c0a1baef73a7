"""One pipeline run in a fresh process, as `python -m pipeline.local_runner` would do it.

  python -m bench.pipeline.run_once OUTPUT_DIR PRESET CORPUS
Prints `RESULT {json}`: epoch seconds at process start (before any import),
after the imports, after `build()`, and after `LocalDagRunner().run()`.
"""

import time

STARTED = time.time()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def main():
  output_dir, preset, corpus = sys.argv[1:4]
  from absl import logging
  from tfx import v1 as tfx
  from pipeline import local_runner
  imported = time.time()
  logging.set_verbosity(logging.WARNING)
  pipeline = local_runner.build(output_dir, preset, [corpus])
  built = time.time()
  tfx.orchestration.LocalDagRunner().run(pipeline)
  done = time.time()
  print('RESULT ' + json.dumps({'started': STARTED, 'imported': imported, 'built': built,
                                'done': done}), flush=True)


if __name__ == '__main__':
  main()
