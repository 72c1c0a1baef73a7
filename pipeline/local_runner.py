"""Runs the pipeline on TFX's local engine (LocalDagRunner, SQLite ML Metadata).

  tfx pipeline create --engine=local --pipeline_path=pipeline/local_runner.py
  tfx run create --engine=local --pipeline_name=char-rnn
or simply `python -m pipeline.local_runner` (what `make run` does). The corpus,
preset and output directory come from configs.py's environment variables.

What the user sees at the end (`main`):
* success: the run report's path (pipeline/report.py: HTML + plots of the run);
* failure: ONE plain line naming the component and the error, e.g.
  `CorpusIngest failed: CorpusError: /x.txt: no such file (traceback in <log>)`,
  exit status 1. The full log of the run, traceback included, is in
  <output_dir>/logs/<time>.log, whose path the line names.
"""

import datetime
import logging as std_logging
import os
import sys
import traceback
from typing import List, Optional, Sequence

# `tfx pipeline create --pipeline_path=pipeline/local_runner.py` executes this
# file with pipeline/ first on sys.path, where `pipeline` would mean
# pipeline/pipeline.py. The project root goes first so it means this package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging  # pylint: disable=g-import-not-at-top
from tfx import v1 as tfx

from pipeline import configs
from pipeline import pipeline as pipeline_lib

LOGS_DIRNAME = 'logs'


def build(output_dir: str = configs.OUTPUT_DIR, preset_name: Optional[str] = None,
          corpus_sources: Optional[List[str]] = None, overrides: Optional[str] = None,
          warm_start: bool = configs.WARM_START) -> tfx.dsl.Pipeline:
  """The pipeline as configured; tests pass their own directory, corpus and preset."""
  return pipeline_lib.create_pipeline(
      pipeline_name=configs.PIPELINE_NAME,
      pipeline_root=configs.pipeline_root(output_dir),
      corpus_sources=corpus_sources or configs.CORPUS_SOURCES,
      preset=configs.get_preset(preset_name, overrides),
      trainer_run_fn=configs.TRAINER_RUN_FN,
      serving_model_dir=os.path.join(configs.serving_model_dir(output_dir),
                                     configs.SERVING_MODEL_NAME),
      warm_start=warm_start,
      metadata_connection_config=tfx.orchestration.metadata
      .sqlite_metadata_connection_config(configs.metadata_path(output_dir)),
      beam_pipeline_args=configs.BEAM_PIPELINE_ARGS)


def run(output_dir: str = configs.OUTPUT_DIR, **kwargs) -> None:
  tfx.orchestration.LocalDagRunner().run(build(output_dir, **kwargs))


# ------------------------------------------------------------------ what the user sees
def root_cause(error: BaseException) -> BaseException:
  """The innermost exception of a chain: the CorpusError inside TFX's wrappers."""
  seen = set()
  while id(error) not in seen:
    seen.add(id(error))
    inner = error.__cause__ or (None if error.__suppress_context__ else error.__context__)
    if inner is None:
      break
    error = inner
  return error


def known_runs(metadata_path: str) -> List[str]:
  """The pipeline runs ML Metadata holds now ([] when there is no store yet)."""
  if not os.path.exists(metadata_path):
    return []
  try:
    from pipeline import runs
    return runs.run_ids(runs.open_store(metadata_path))
  except Exception:  # pylint: disable=broad-except
    return []


def failed_component(metadata_path: str, error: BaseException,
                     earlier_runs: Sequence[str] = ()) -> str:
  """The component whose execution failed in this run (the newest in ML Metadata,
  unless it is one of `earlier_runs`, i.e. this run never started), else what
  the traceback says."""
  try:
    from pipeline import runs
    run = runs.read_run(runs.open_store(metadata_path))
    if run.run_id in earlier_runs:
      raise LookupError('the newest run in ML Metadata is an earlier one')
    if run.failed_component:
      return run.failed_component
    running = [c.name for c in run.components if c.state in ('running', 'new')]
    if running:
      return running[-1]
  except Exception:  # pylint: disable=broad-except
    pass   # no store yet (e.g. the pipeline could not even be built)
  frames = traceback.extract_tb(error.__traceback__)
  for frame in reversed(frames):
    parts = frame.filename.replace(os.sep, '/').split('/')
    if 'components' in parts[:-1]:
      return os.path.splitext(parts[-1])[0]
  return 'The pipeline'


def failure_line(component: str, error: BaseException, log_path: str) -> str:
  cause = root_cause(error)
  message = ' '.join(str(cause).split()) or '(no message)'
  if len(message) > 300:
    message = message[:297] + '...'
  return f'{component} failed: {type(cause).__name__}: {message} (traceback in {log_path})'


def _log_to_file(output_dir: str) -> std_logging.FileHandler:
  """Everything logged during the run (absl and Python logging) also goes to a file."""
  directory = os.path.join(output_dir, LOGS_DIRNAME)
  os.makedirs(directory, exist_ok=True)
  stamp = datetime.datetime.now().strftime('%Y%m%d-%H%M%S')
  path = os.path.join(directory, f'run-{stamp}-{os.getpid()}.log')
  handler = std_logging.FileHandler(path, encoding='utf-8')
  handler.setLevel(std_logging.INFO)
  handler.setFormatter(std_logging.Formatter('%(asctime)s %(levelname)s %(name)s: %(message)s'))
  std_logging.getLogger().addHandler(handler)
  return handler


def _append(handler: std_logging.FileHandler, text: str) -> None:
  handler.acquire()
  try:
    handler.flush()
    handler.stream.write(text)
    handler.flush()
  finally:
    handler.release()


def main(output_dir: str = configs.OUTPUT_DIR, **build_kwargs) -> int:
  """Runs the pipeline; 0 and the report's path, or 1 and one line naming what failed.

  `build_kwargs` go to build() (preset_name, corpus_sources, overrides, warm_start).
  """
  logging.set_verbosity(logging.INFO)
  handler = _log_to_file(output_dir)
  log_path = handler.baseFilename
  metadata_path = configs.metadata_path(output_dir)
  # Runs already recorded: a failure before this run starts is not blamed on them
  # (their times cannot tell: two runs can start within the same second).
  earlier_runs = known_runs(metadata_path)
  try:
    try:
      run(output_dir, **build_kwargs)
    except Exception as error:  # pylint: disable=broad-except
      _append(handler, 'The run failed:\n' + traceback.format_exc())   # the file, not the console
      line = failure_line(failed_component(metadata_path, error, earlier_runs), error, log_path)
      sys.stdout.flush()
      print(line, file=sys.stderr, flush=True)
      return 1
    from pipeline import report
    try:
      path = report.write_report(metadata_path, report.reports_dir(output_dir))
    except Exception:  # pylint: disable=broad-except
      _append(handler, 'The report failed:\n' + traceback.format_exc())
      print(f'The run succeeded; its report could not be written (see {log_path})', flush=True)
      return 0
    print(f'Run report: {path}', flush=True)
    return 0
  finally:
    std_logging.getLogger().removeHandler(handler)
    handler.close()


if __name__ == '__main__':
  sys.exit(main())
