"""ServedModel: the newest complete, loadable version is the baseline; a broken one never is.

The case issue 10 measured: the only served version has a saved_model.pb cut to
a third. Before, ServedModel copied it, and the gate (and warm start) crashed
on it in every later run. Now it is skipped with a reason, and with nothing
else served the pipeline runs as on its first day.
"""

import logging
import os
import shutil

import tensorflow as tf
from tfx.types import standard_artifacts

from components import pusher, served_model
from components.model import build_keras_model, export_serving_model
from components.text import CharVocab

VOCAB = CharVocab.from_text('abcdef \n')
CFG = dict(embedding_dim=4, rnn_type='gru', rnn_units=8, num_layers=1, dropout=0.0)


def _export(path):
  tf.keras.utils.set_random_seed(0)
  export_serving_model(build_keras_model(len(VOCAB), **CFG), VOCAB.tokens, CFG, 50, str(path))
  return str(path)


def _run(base, out):
  artifact = standard_artifacts.Model()
  artifact.uri = str(out)
  os.makedirs(artifact.uri)
  served_model.Executor().Do({}, {'model': [artifact]}, {'serving_model_dir': str(base)})
  return artifact


def test_a_truncated_only_version_counts_as_nothing_served(tmp_path, caplog):
  model = _export(tmp_path / 'model')
  base = tmp_path / 'char_rnn'
  shutil.copytree(model, base / '9')
  pb = base / '9' / 'saved_model.pb'
  pb.write_bytes(pb.read_bytes()[:pb.stat().st_size // 3])
  with caplog.at_level(logging.WARNING, logger='absl'):
    assert served_model.latest_version_dir(str(base)) is None
    assert served_model.served_fingerprint(str(base)) == served_model.NOTHING_SERVED
  assert f'skipping version {base / "9"}' in caplog.text
  artifact = _run(base, tmp_path / 'served')
  assert artifact.get_int_custom_property('served_version') == 0
  assert served_model.is_empty(artifact)        # the gate and warm start see no baseline


def test_the_snapshot_is_the_newest_complete_version_and_loads(tmp_path):
  model = _export(tmp_path / 'model')
  base = tmp_path / 'char_rnn'
  v1, _ = pusher.push(model, str(base))
  shutil.copytree(model, base / str(v1 + 5))
  os.remove(base / str(v1 + 5) / 'variables' / 'variables.index')    # no variables: skipped
  artifact = _run(base, tmp_path / 'served')
  assert artifact.get_int_custom_property('served_version') == v1
  assert artifact.get_string_custom_property('served_from') == os.path.join(base, str(v1))
  assert not served_model.is_empty(artifact)
  loaded = tf.saved_model.load(os.path.join(artifact.uri, 'Format-Serving'))
  assert 'generate' in loaded.signatures
  assert pusher.incomplete_reason(os.path.join(artifact.uri, 'Format-Serving')) is None
