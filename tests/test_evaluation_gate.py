"""EvaluationGate: eval loss of the exported model decides the blessing the Pusher honours."""

import glob
import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from tfx.types import standard_artifacts

from components import evaluation_gate, examples_format
from components.model import build_keras_model, export_serving_model
from components.artifacts import Vocabulary
from components.text import CharVocab

TEXT = ('First Citizen:\nBefore we proceed any further, hear me speak.\n'
        'All:\nSpeak, speak.\n') * 20
VOCAB = CharVocab.from_text(TEXT)
CFG = dict(embedding_dim=8, rnn_type='gru', rnn_units=16, num_layers=1, dropout=0.0)


def _artifact(cls, uri, artifact_id=None):
  a = cls()
  a.uri = str(uri)
  if artifact_id is not None:
    a.id = artifact_id
  return a


def _model(tmp_path, name, noise, artifact_id):
  tf.keras.utils.set_random_seed(artifact_id)
  keras_model = build_keras_model(len(VOCAB), **CFG)
  rng = np.random.default_rng(artifact_id)
  keras_model.set_weights([w + rng.normal(0, noise, w.shape).astype(w.dtype)
                           for w in keras_model.get_weights()])
  uri = tmp_path / name
  export_serving_model(keras_model, VOCAB.tokens, CFG, 100, str(uri / 'Format-Serving'))
  return _artifact(standard_artifacts.Model, uri, artifact_id)


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('gate')
  examples = tmp / 'examples'
  (examples / 'Split-eval').mkdir(parents=True)
  serialize = examples_format.serialize_fn(21, len(VOCAB))
  ids = VOCAB.encode(TEXT)
  with tf.io.TFRecordWriter(str(examples / 'Split-eval' / 'data.gz'), 'GZIP') as w:
    for s in range(0, len(ids) - 21, 20):
      w.write(serialize(ids[s:s + 21]))
  vocab_dir = tmp / 'vocab'
  vocab_dir.mkdir()
  VOCAB.save(str(vocab_dir))
  good = _model(tmp, 'good', 0.01, 1)
  bad = _model(tmp, 'bad', 2.0, 2)
  texts = evaluation_gate.eval_texts(str(examples), VOCAB)
  losses = {m.id: evaluation_gate.eval_loss(os.path.join(m.uri, 'Format-Serving'), texts)
            for m in (good, bad)}
  return tmp, examples, vocab_dir, good, bad, losses


def _gate(tmp, examples, vocab_dir, model, baseline, max_eval_loss, tolerance, name,
          max_eval_loss_ratio=None):
  blessing = _artifact(standard_artifacts.ModelBlessing, tmp / name)
  os.makedirs(blessing.uri)
  inputs = {'model': [model],
            'examples': [_artifact(standard_artifacts.Examples, examples)],
            'vocabulary': [_artifact(Vocabulary, vocab_dir)]}
  if baseline is not None:
    inputs['baseline_model'] = [baseline]
  evaluation_gate.Executor().Do(inputs, {'blessing': [blessing]},
                                {'max_eval_loss': max_eval_loss,
                                 'max_eval_loss_ratio': max_eval_loss_ratio,
                                 'regression_tolerance': tolerance, 'max_eval_windows': 0})
  with open(os.path.join(blessing.uri, 'evaluation.json')) as f:
    # Strict JSON: a NaN loss must not be written as the non-standard `NaN`.
    return blessing, json.loads(f.read(), parse_constant=_no_constants)


def _no_constants(name):
  raise AssertionError(f'evaluation.json holds {name}, which is not JSON')


def test_eval_loss_is_the_mean_negative_log_likelihood_per_character(setup):
  tmp, examples, *_ , good, _, losses = setup
  texts = evaluation_gate.eval_texts(str(examples), VOCAB)
  assert all(len(t) == 21 for t in texts)
  score = tf.saved_model.load(os.path.join(good.uri, 'Format-Serving')).signatures['score']
  out = score(text=tf.constant(texts))
  expected = -out['log_likelihood'].numpy().sum() / out['num_scored'].numpy().sum()
  assert losses[good.id] == pytest.approx(expected, rel=1e-5)
  assert out['num_scored'].numpy().tolist() == [20] * len(texts)


def test_candidate_under_threshold_without_baseline_is_blessed(setup):
  tmp, examples, vocab_dir, good, _, losses = setup
  blessing, result = _gate(tmp, examples, vocab_dir, good, None, losses[good.id] + 0.01, 0.0, 'b1')
  assert blessing.get_int_custom_property('blessed') == 1
  assert blessing.get_int_custom_property('current_model_id') == good.id
  assert os.path.exists(os.path.join(blessing.uri, 'BLESSED'))
  assert result['bits_per_char'] == pytest.approx(losses[good.id] / math.log(2))


def test_candidate_over_threshold_is_not_blessed(setup):
  tmp, examples, vocab_dir, good, _, losses = setup
  blessing, result = _gate(tmp, examples, vocab_dir, good, None, losses[good.id] - 0.01, 0.0, 'b2')
  assert blessing.get_int_custom_property('blessed') == 0
  assert os.path.exists(os.path.join(blessing.uri, 'NOT_BLESSED'))
  assert 'threshold' in result['reasons'][0]


def test_candidate_worse_than_blessed_baseline_beyond_tolerance_is_not_blessed(setup):
  tmp, examples, vocab_dir, good, bad, losses = setup
  assert losses[bad.id] > losses[good.id] + 0.1
  blessing, result = _gate(tmp, examples, vocab_dir, bad, good, 100.0, 0.1, 'b3')
  assert blessing.get_int_custom_property('blessed') == 0
  assert blessing.get_int_custom_property('baseline_model_id') == good.id
  assert result['baseline_eval_loss'] == pytest.approx(losses[good.id])
  assert 'baseline' in result['reasons'][0]
  # Within the tolerance it passes.
  blessing, _ = _gate(tmp, examples, vocab_dir, bad, good, 100.0,
                      losses[bad.id] - losses[good.id] + 0.01, 'b4')
  assert blessing.get_int_custom_property('blessed') == 1


def _nan_model(tmp_path, name, artifact_id):
  """A diverged model: its weights are NaN, so every log-likelihood is NaN."""
  tf.keras.utils.set_random_seed(artifact_id)
  keras_model = build_keras_model(len(VOCAB), **CFG)
  keras_model.set_weights([np.full(w.shape, np.nan, w.dtype) for w in keras_model.get_weights()])
  uri = tmp_path / name
  export_serving_model(keras_model, VOCAB.tokens, CFG, 100, str(uri / 'Format-Serving'))
  return _artifact(standard_artifacts.Model, uri, artifact_id)


@pytest.fixture(scope='module')
def diverged(setup):
  tmp = setup[0]
  return _nan_model(tmp, 'nan', 3)


def test_a_diverged_candidate_is_refused_with_the_reason(setup, diverged, caplog):
  tmp, examples, vocab_dir, *_ = setup
  texts = evaluation_gate.eval_texts(str(examples), VOCAB)
  assert math.isnan(evaluation_gate.eval_loss(os.path.join(diverged.uri, 'Format-Serving'),
                                              texts))
  # No threshold and no baseline: before, every `>` with NaN was False and it passed.
  with caplog.at_level('INFO', logger='absl'):
    blessing, result = _gate(tmp, examples, vocab_dir, diverged, None, None, 0.0, 'n1',
                             max_eval_loss_ratio=100.0)
  assert blessing.get_int_custom_property('blessed') == 0
  assert os.path.exists(os.path.join(blessing.uri, 'NOT_BLESSED'))
  assert result['eval_loss'] is None and result['eval_loss_finite'] is False
  assert result['reasons'] == ['eval loss is NaN: the model diverged']
  assert 'eval loss is NaN: the model diverged' in caplog.text


def test_a_diverged_candidate_is_refused_even_against_a_baseline(setup, diverged):
  tmp, examples, vocab_dir, good, *_ = setup
  blessing, result = _gate(tmp, examples, vocab_dir, diverged, good, 100.0, 100.0, 'n2')
  assert blessing.get_int_custom_property('blessed') == 0
  assert any('diverged' in r for r in result['reasons'])


def test_a_nan_baseline_counts_as_no_baseline(setup, diverged, caplog):
  tmp, examples, vocab_dir, good, _, losses = setup
  with caplog.at_level('WARNING', logger='absl'):
    blessing, result = _gate(tmp, examples, vocab_dir, good, diverged,
                             losses[good.id] + 0.01, 0.0, 'n3')
  # Judged on the threshold alone: a NaN baseline would otherwise make it pass
  # (or fail) by accident.
  assert blessing.get_int_custom_property('blessed') == 1
  assert 'baseline_eval_loss' not in result and result['baseline_ignored'] == diverged.uri
  assert not blessing.has_custom_property('baseline_model_id')
  assert 'NaN eval loss' in caplog.text


def test_an_unreadable_baseline_counts_as_no_baseline(setup, caplog):
  tmp, examples, vocab_dir, good, _, losses = setup
  broken = tmp / 'broken' / 'Format-Serving'
  broken.mkdir(parents=True)
  with open(os.path.join(good.uri, 'Format-Serving', 'saved_model.pb'), 'rb') as f:
    pb = f.read()
  (broken / 'saved_model.pb').write_bytes(pb[:len(pb) // 3])
  baseline = _artifact(standard_artifacts.Model, tmp / 'broken', 4)
  with caplog.at_level('WARNING', logger='absl'):
    blessing, result = _gate(tmp, examples, vocab_dir, good, baseline,
                             losses[good.id] + 0.01, 0.0, 'n4')
  assert blessing.get_int_custom_property('blessed') == 1
  assert result['baseline_ignored'] == baseline.uri
  assert 'cannot be scored' in caplog.text


def test_unigram_entropy_is_that_of_the_scored_characters(setup):
  _, examples, *_ = setup
  texts = evaluation_gate.eval_texts(str(examples), VOCAB)
  scored = ''.join(t[1:] for t in texts)
  _, counts = np.unique(list(scored), return_counts=True)
  p = counts / counts.sum()
  assert evaluation_gate.unigram_entropy(texts) == pytest.approx(-(p * np.log(p)).sum())
  # Uniform over k characters: ln k.
  assert evaluation_gate.unigram_entropy(['xabcd', 'xdcba']) == pytest.approx(math.log(4))


def test_ratio_threshold_is_relative_to_the_eval_texts_unigram_entropy(setup):
  tmp, examples, vocab_dir, good, _, losses = setup
  entropy = evaluation_gate.unigram_entropy(evaluation_gate.eval_texts(str(examples), VOCAB))
  ratio = losses[good.id] / entropy
  blessing, result = _gate(tmp, examples, vocab_dir, good, None, None, 0.0, 'r1',
                           max_eval_loss_ratio=ratio * 1.01)
  assert blessing.get_int_custom_property('blessed') == 1
  assert result['unigram_entropy'] == pytest.approx(entropy)
  assert result['max_eval_loss_ratio'] == pytest.approx(ratio * 1.01)
  assert result['ratio_threshold'] == pytest.approx(ratio * 1.01 * entropy)
  assert result['max_eval_loss'] is None
  assert result['eval_loss_over_entropy'] == pytest.approx(ratio)
  blessing, result = _gate(tmp, examples, vocab_dir, good, None, None, 0.0, 'r2',
                           max_eval_loss_ratio=ratio * 0.99)
  assert blessing.get_int_custom_property('blessed') == 0
  assert 'unigram entropy' in result['reasons'][0]
  # Both thresholds apply when both are set: the absolute cap still refuses.
  blessing, result = _gate(tmp, examples, vocab_dir, good, None, losses[good.id] - 0.01, 0.0,
                           'r3', max_eval_loss_ratio=ratio * 1.01)
  assert blessing.get_int_custom_property('blessed') == 0
  assert result['reasons'] == [f'eval loss {losses[good.id]:.4f} > threshold '
                               f'{losses[good.id] - 0.01} (max_eval_loss)']


def test_no_threshold_set_judges_on_finiteness_and_baseline_only(setup):
  tmp, examples, vocab_dir, good, bad, losses = setup
  blessing, result = _gate(tmp, examples, vocab_dir, bad, None, 0, 0.0, 'r4',
                           max_eval_loss_ratio=0)
  assert blessing.get_int_custom_property('blessed') == 1, result['reasons']
  assert result['max_eval_loss'] is None and result['ratio_threshold'] is None


def test_a_truncated_eval_shard_is_an_error_naming_the_file(setup, tmp_path):
  _, examples, *_ = setup
  broken = tmp_path / 'examples'
  shutil.copytree(examples, broken)
  [path] = glob.glob(str(broken / 'Split-eval' / '*'))
  with open(path, 'r+b') as f:
    f.truncate(os.path.getsize(path) // 2)
  with pytest.raises(ValueError, match=re.escape(path) + ': truncated or corrupted'):
    evaluation_gate.eval_texts(str(broken), VOCAB)


def test_fewer_eval_windows_than_windowgen_wrote_is_an_error(setup):
  _, examples, *_ = setup
  n = len(evaluation_gate.eval_texts(str(examples), VOCAB))
  assert len(evaluation_gate.eval_texts(str(examples), VOCAB, expected_windows=n)) == n
  with pytest.raises(ValueError, match=f'{n} windows, but WindowGen wrote {n + 5}'):
    evaluation_gate.eval_texts(str(examples), VOCAB, expected_windows=n + 5)
  assert len(evaluation_gate.eval_texts(str(examples), VOCAB, max_windows=3)) == 3
