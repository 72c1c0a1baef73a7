"""Runs the pipeline on TFX's local engine (LocalDagRunner, SQLite ML Metadata).

  tfx pipeline create --engine=local --pipeline_path=pipeline/local_runner.py
  tfx run create --engine=local --pipeline_name=char-rnn
or simply `python -m pipeline.local_runner` (what `make run` does). The corpus,
preset and output directory come from configs.py's environment variables.
"""

import os

from absl import logging
from tfx import v1 as tfx

from pipeline import configs
from pipeline import pipeline as pipeline_lib


def build(output_dir: str = configs.OUTPUT_DIR, preset_name: str = None,
          corpus_sources=None) -> tfx.dsl.Pipeline:
  return pipeline_lib.create_pipeline(
      pipeline_name=configs.PIPELINE_NAME,
      pipeline_root=configs.pipeline_root(output_dir),
      corpus_sources=corpus_sources or configs.CORPUS_SOURCES,
      preset=configs.get_preset(preset_name),
      trainer_run_fn=configs.TRAINER_RUN_FN,
      serving_model_dir=os.path.join(configs.serving_model_dir(output_dir),
                                     configs.SERVING_MODEL_NAME),
      warm_start=configs.WARM_START,
      metadata_connection_config=tfx.orchestration.metadata
      .sqlite_metadata_connection_config(configs.metadata_path(output_dir)),
      beam_pipeline_args=configs.BEAM_PIPELINE_ARGS)


def run() -> None:
  tfx.orchestration.LocalDagRunner().run(build())


if __name__ == '__main__':
  logging.set_verbosity(logging.INFO)
  run()
