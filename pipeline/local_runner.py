"""Runs the pipeline on TFX's local engine (LocalDagRunner, SQLite ML Metadata).

  tfx pipeline create --engine=local --pipeline_path=pipeline/local_runner.py
  tfx run create --engine=local --pipeline_name=char-rnn
or simply `python -m pipeline.local_runner` (what `make run` does). The corpus,
preset and output directory come from configs.py's environment variables.
"""

import os
import sys
from typing import List, Optional

# `tfx pipeline create --pipeline_path=pipeline/local_runner.py` executes this
# file with pipeline/ first on sys.path, where `pipeline` would mean
# pipeline/pipeline.py. The project root goes first so it means this package.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import logging  # pylint: disable=g-import-not-at-top
from tfx import v1 as tfx

from pipeline import configs
from pipeline import pipeline as pipeline_lib


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


def run() -> None:
  tfx.orchestration.LocalDagRunner().run(build())


if __name__ == '__main__':
  logging.set_verbosity(logging.INFO)
  run()
