"""create_pipeline(): wiring only. Every value arrives as an argument from configs.py.

  CorpusIngest -> VocabularyGen -> WindowGen -> CharRnnTrainer -> EvaluationGate -> Pusher
                  (Corpus)         (Examples)   (Model)            (ModelBlessing)
  ServedModel (the newest complete pushed version) -> EvaluationGate's baseline, and
  the Trainer's base_model when warm_start is on.

The Pusher is ours (components/pusher.py): TFX's, with a push that makes a
version visible only when it is complete.
"""

from typing import Any, Dict, List, Optional

from tfx import v1 as tfx

from components.corpus_ingest import CorpusIngest
from components.evaluation_gate import EvaluationGate
from components.pusher import Pusher
from components.served_model import ServedModel
from components.trainer import CharRnnTrainer
from components.vocabulary_gen import VocabularyGen
from components.window_gen import WindowGen


def create_pipeline(pipeline_name: str, pipeline_root: str, corpus_sources: List[str],
                    preset: Any, trainer_run_fn: str, serving_model_dir: str,
                    warm_start: bool = False, enable_cache: bool = True,
                    metadata_connection_config: Optional[Any] = None,
                    beam_pipeline_args: Optional[List[str]] = None,
                    corpus_fingerprint: Optional[str] = None,
                    served_model_fingerprint: Optional[str] = None) -> tfx.dsl.Pipeline:
  """`preset` is a configs.Preset; `serving_model_dir` is the Pusher's base directory.

  The fingerprints default to what the sources and the serving directory hold
  now (read at build time); a compiler for another orchestrator passes fixed
  values and disables caching of those two steps instead.
  """
  ingest = CorpusIngest(
      sources=corpus_sources, seq_length=preset.seq_length,
      eval_fraction=preset.eval_fraction, shard_chars=preset.shard_chars,
      unicode_normalization=preset.unicode_normalization,
      fingerprint=corpus_fingerprint)
  vocabulary = VocabularyGen(corpus=ingest.outputs['corpus'])
  windows = WindowGen(
      corpus=ingest.outputs['corpus'], vocabulary=vocabulary.outputs['vocabulary'],
      seq_length=preset.seq_length, stride=preset.window_stride,
      eval_fraction=preset.eval_fraction)

  served = ServedModel(serving_model_dir=serving_model_dir,
                       fingerprint=served_model_fingerprint)

  trainer = CharRnnTrainer(
      examples=windows.outputs['examples'],
      vocabulary=vocabulary.outputs['vocabulary'],
      corpus=ingest.outputs['corpus'],
      base_model=served.outputs['model'] if warm_start else None,
      run_fn=trainer_run_fn,
      custom_config=preset.training_config())

  gate = EvaluationGate(
      model=trainer.outputs['model'], examples=windows.outputs['examples'],
      vocabulary=vocabulary.outputs['vocabulary'],
      baseline_model=served.outputs['model'],
      max_eval_loss=preset.max_eval_loss,
      max_eval_loss_ratio=preset.max_eval_loss_ratio,
      regression_tolerance=preset.regression_tolerance)

  pusher = Pusher(
      model=trainer.outputs['model'],
      model_blessing=gate.outputs['blessing'],
      push_destination=tfx.proto.PushDestination(
          filesystem=tfx.proto.PushDestination.Filesystem(
              base_directory=serving_model_dir)))

  return tfx.dsl.Pipeline(
      pipeline_name=pipeline_name,
      pipeline_root=pipeline_root,
      components=[ingest, vocabulary, windows, served, trainer, gate, pusher],
      enable_cache=enable_cache,
      metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=beam_pipeline_args or [])
