"""The export contract: signatures, dtypes, shapes, numerics, padding, seeds, [UNK], limits.

Run against small random models of each configuration below, or against any export
the Trainer (or bench.gpu) wrote, with that model's own vocabulary and limits:

  CHAR_RNN_CONTRACT_EXPORT=outputs/serving_model/char_rnn/<version> .venv/bin/pytest -n 0 tests/test_model.py
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from components import trainer_module
from components.model import build_keras_model, export_serving_model, state_size, with_state_io
from components.text import CharVocab

TEXT = 'First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n'
VOCAB = CharVocab.from_text(TEXT)
CONFIGS = {
    'gru': dict(embedding_dim=8, rnn_type='gru', rnn_units=16, num_layers=1, dropout=0.0),
    'lstm-2': dict(embedding_dim=8, rnn_type='lstm', rnn_units=12, num_layers=2, dropout=0.1),
    'gru-2-bf16': dict(embedding_dim=8, rnn_type='gru', rnn_units=16, num_layers=2, dropout=0.0),
}
# Exports multiplying in bfloat16 match Keras (float32) to bf16's ~3 digits.
MATMUL_DTYPE = {'gru-2-bf16': 'bfloat16'}
KERAS_ATOL = {'float32': 1e-4, 'bfloat16': 5e-2}
CONTRACT_EXPORT = os.environ.get('CHAR_RNN_CONTRACT_EXPORT')


def _random_model(cfg, seed=0):
  tf.keras.utils.set_random_seed(seed)
  model = build_keras_model(len(VOCAB), **{k: v for k, v in cfg.items() if k != 'matmul_dtype'})
  rng = np.random.default_rng(seed)
  model.set_weights([w + rng.normal(0, 0.3, w.shape).astype(w.dtype)
                     for w in model.get_weights()])
  return model


def load_export(path):
  """The fixture's (Keras model, cfg, path, loaded) for a model the Trainer exported:
  its Keras weights, vocabulary (cfg['tokens']) and limits from its assets.extra."""
  extra = os.path.join(path, 'assets.extra')
  keras_dir = os.path.join(extra, trainer_module.KERAS_DIR)
  with open(os.path.join(keras_dir, trainer_module.CONFIG_FILE)) as f:
    saved = json.load(f)
  with open(os.path.join(extra, trainer_module.METRICS_FILE)) as f:
    trained = json.load(f)['config']
  model = build_keras_model(len(saved['tokens']), **saved['model_config'])
  model.load_weights(os.path.join(keras_dir, trainer_module.WEIGHTS_FILE))
  cfg = dict(saved['model_config'], matmul_dtype=trained['serving_matmul_dtype'],
             tokens=saved['tokens'], max_generate_chars=trained['max_generate_chars'])
  return model, cfg, path, tf.saved_model.load(path)


@pytest.fixture(scope='module', params=['given'] if CONTRACT_EXPORT else sorted(CONFIGS))
def exported(request, tmp_path_factory):
  if CONTRACT_EXPORT:
    return load_export(CONTRACT_EXPORT)
  cfg = CONFIGS[request.param]
  model = _random_model(cfg)
  path = str(tmp_path_factory.mktemp(request.param))
  dtype = MATMUL_DTYPE.get(request.param, 'float32')
  export_serving_model(model, VOCAB.tokens, cfg, max_generate_chars=300, export_dir=path,
                       matmul_dtype=dtype)
  return model, dict(cfg, matmul_dtype=dtype), path, tf.saved_model.load(path)


def _vocab(cfg):
  return CharVocab(cfg['tokens']) if 'tokens' in cfg else VOCAB


def _sizes(cfg):
  return state_size(cfg['rnn_type'], cfg['rnn_units'], cfg['num_layers']), len(_vocab(cfg))


def test_signatures_have_the_contracts_names_dtypes_and_shapes(exported):
  _, cfg, _, loaded = exported
  s, v = _sizes(cfg)
  sigs = loaded.signatures
  assert set(sigs) == {'one_step', 'generate', 'serving_default', 'score'}

  def spec(fn):
    inputs = {k: (t.dtype, t.shape.as_list()) for k, t in fn.structured_input_signature[1].items()}
    outputs = {k: (t.dtype, t.shape.as_list()) for k, t in fn.structured_outputs.items()}
    return inputs, outputs

  assert spec(sigs['one_step']) == (
      {'inputs': (tf.string, [None]), 'states': (tf.float32, [None, s]),
       'temperature': (tf.float32, [])},
      {'chars': (tf.string, [None]), 'states': (tf.float32, [None, s]),
       'logits': (tf.float32, [None, v])})
  assert spec(sigs['generate']) == spec(sigs['serving_default']) == (
      {'prompt': (tf.string, [None]), 'num_chars': (tf.int32, []),
       'temperature': (tf.float32, []), 'seed': (tf.int64, [])},
      {'text': (tf.string, [None]), 'states': (tf.float32, [None, s])})
  assert spec(sigs['score']) == (
      {'text': (tf.string, [None])},
      {'log_likelihood': (tf.float32, [None]), 'num_scored': (tf.int32, [None])})


def test_one_step_logits_equal_the_keras_model(exported):
  model, cfg, _, loaded = exported
  s, _ = _sizes(cfg)
  prompt = 'Before we proceed'
  keras_logits = model(_vocab(cfg).encode(prompt)[None], training=False).numpy()[0, -1]
  out = loaded.signatures['one_step'](inputs=tf.constant([prompt]), states=tf.zeros([1, s]),
                                      temperature=tf.constant(1.0))
  np.testing.assert_allclose(out['logits'].numpy()[0], keras_logits,
                             atol=KERAS_ATOL[cfg['matmul_dtype']])


def test_feeding_one_step_its_own_state_equals_one_long_call(exported):
  _, cfg, _, loaded = exported
  s, _ = _sizes(cfg)
  one_step = loaded.signatures['one_step']
  whole = one_step(inputs=tf.constant(['Speak, speak.']), states=tf.zeros([1, s]),
                   temperature=tf.constant(1.0))
  states = tf.zeros([1, s])
  for ch in 'Speak, speak.':
    states = one_step(inputs=tf.constant([ch]), states=states,
                      temperature=tf.constant(1.0))['states']
  np.testing.assert_allclose(states.numpy(), whole['states'].numpy(), atol=1e-5)


def test_padding_does_not_leak_into_shorter_rows(exported):
  _, cfg, _, loaded = exported
  s, _ = _sizes(cfg)
  one_step = loaded.signatures['one_step']
  alone = one_step(inputs=tf.constant(['All:']), states=tf.zeros([1, s]),
                   temperature=tf.constant(1.0))
  batched = one_step(inputs=tf.constant(['First Citizen: hear me', 'All:', '']),
                     states=tf.zeros([3, s]), temperature=tf.constant(1.0))
  # Equal up to float rounding (BLAS blocks a batch of 3 differently from 1);
  # a padding step leaking in would move values by orders of magnitude more.
  np.testing.assert_allclose(batched['states'].numpy()[1], alone['states'].numpy()[0], atol=1e-6)
  np.testing.assert_allclose(batched['logits'].numpy()[1], alone['logits'].numpy()[0], atol=1e-6)
  # An empty row consumes nothing: its state comes back unchanged.
  np.testing.assert_array_equal(batched['states'].numpy()[2], np.zeros(s))

  score = loaded.signatures['score']
  a = score(text=tf.constant(['Speak']))['log_likelihood'].numpy()[0]
  b = score(text=tf.constant(['Speak', 'Before we proceed any further']))
  assert b['log_likelihood'].numpy()[0] == pytest.approx(a, abs=1e-6)
  assert b['num_scored'].numpy().tolist() == [4, 28]


def test_state_io_model_carries_state_like_one_step_and_like_one_long_call(exported):
  """Training with carried state (components/tbptt.py) uses the export's state layout."""
  model, cfg, _, loaded = exported
  s, _ = _sizes(cfg)
  state_io = with_state_io(model)
  assert [id(w) for w in state_io.weights] == [id(w) for w in model.weights]   # shared
  ids = tf.constant(_vocab(cfg).encode('First Citizen: hear me speak.')[None])
  whole = model(ids, training=False).numpy()
  head, state = state_io([ids[:, :11], tf.zeros([1, s])], training=False)
  tail, _ = state_io([ids[:, 11:], state], training=False)
  np.testing.assert_allclose(np.concatenate([head, tail], axis=1), whole, atol=1e-5)
  # one_step's state after the same characters is the same state.
  stepped = loaded.signatures['one_step'](inputs=tf.constant(['First Citi']),
                                          states=tf.zeros([1, s]), temperature=tf.constant(1.0))
  np.testing.assert_allclose(stepped['states'].numpy(), state_io(
      [ids[:, :10], tf.zeros([1, s])], training=False)[1].numpy(),
                             atol=KERAS_ATOL[cfg['matmul_dtype']])


def test_generate_is_deterministic_for_a_seed_and_returns_only_the_continuation(exported):
  _, _, _, loaded = exported
  gen = loaded.signatures['generate']
  args = dict(prompt=tf.constant(['All:', 'First']), num_chars=tf.constant(40),
              temperature=tf.constant(1.0))
  a = gen(seed=tf.constant(1, tf.int64), **args)
  b = gen(seed=tf.constant(1, tf.int64), **args)
  c = gen(seed=tf.constant(2, tf.int64), **args)
  assert a['text'].numpy().tolist() == b['text'].numpy().tolist()
  assert a['text'].numpy().tolist() != c['text'].numpy().tolist()
  for t in a['text'].numpy():
    assert len(t.decode('utf-8')) == 40
  assert gen(seed=tf.constant(1, tf.int64), prompt=tf.constant(['x']),
             num_chars=tf.constant(0), temperature=tf.constant(1.0))['text'].numpy() == [b'']


def test_generate_state_continues_with_one_step(exported):
  """generate's state has consumed all but the last character, like the tutorial's loop."""
  _, _, _, loaded = exported
  g = loaded.signatures['generate'](prompt=tf.constant(['All:']), num_chars=tf.constant(5),
                                    temperature=tf.constant(0.0), seed=tf.constant(0, tf.int64))
  greedy = loaded.signatures['generate'](prompt=tf.constant(['All:']), num_chars=tf.constant(6),
                                         temperature=tf.constant(0.0),
                                         seed=tf.constant(0, tf.int64))
  text = g['text'].numpy()[0].decode()
  nxt = loaded.signatures['one_step'](inputs=tf.constant([text[-1]]), states=g['states'],
                                      temperature=tf.constant(0.0))
  assert text + nxt['chars'].numpy()[0].decode() == greedy['text'].numpy()[0].decode()


def test_unknown_characters_map_to_unk_and_unk_is_never_sampled(exported):
  _, cfg, _, loaded = exported
  s, v = _sizes(cfg)
  # Characters outside the vocabulary and even invalid UTF-8 are accepted.
  out = loaded.signatures['one_step'](
      inputs=tf.constant(['\U0001F600\u4e2d', b'\xff\xfe']), states=tf.zeros([2, s]),
      temperature=tf.constant(1.0))
  assert out['logits'].shape == (2, v)
  # Bias the model so [UNK] dominates the logits: it must still not be sampled.
  gen = loaded.signatures['generate'](prompt=tf.constant(['\U0001F600'] * 4),
                                      num_chars=tf.constant(200), temperature=tf.constant(3.0),
                                      seed=tf.constant(3, tf.int64))
  for t in gen['text'].numpy():
    assert '[UNK]' not in t.decode('utf-8')
  scored = loaded.signatures['score'](text=tf.constant(['a\U0001F600b']))
  assert np.isfinite(scored['log_likelihood'].numpy()).all()


def test_generate_rejects_too_many_characters_and_negative_temperature(exported):
  _, cfg, _, loaded = exported
  limit = cfg.get('max_generate_chars', 300)
  gen = loaded.signatures['generate']
  with pytest.raises(tf.errors.InvalidArgumentError, match=f'num_chars must be <= {limit}'):
    gen(prompt=tf.constant(['a']), num_chars=tf.constant(limit + 1),
        temperature=tf.constant(1.0), seed=tf.constant(0, tf.int64))
  with pytest.raises(tf.errors.InvalidArgumentError, match='temperature must be >= 0'):
    gen(prompt=tf.constant(['a']), num_chars=tf.constant(3), temperature=tf.constant(-1.0),
        seed=tf.constant(0, tf.int64))


def test_score_equals_keras_log_likelihood(exported):
  model, cfg, _, loaded = exported
  text = 'Speak, speak.'
  ids = _vocab(cfg).encode(text)
  log_probs = tf.nn.log_softmax(model(ids[None], training=False)).numpy()[0]
  expected = sum(log_probs[t, ids[t + 1]] for t in range(len(ids) - 1))
  got = loaded.signatures['score'](text=tf.constant([text]))['log_likelihood'].numpy()[0]
  assert got == pytest.approx(expected, rel=1e-4 if cfg['matmul_dtype'] == 'float32' else 2e-2)


def test_saved_model_uses_core_ops_only_and_loads_without_project_code(exported):
  _, _, path, _ = exported
  from tensorflow.core.protobuf import saved_model_pb2
  sm = saved_model_pb2.SavedModel()
  with open(os.path.join(path, 'saved_model.pb'), 'rb') as f:
    sm.ParseFromString(f.read())
  ops = {n.op for mg in sm.meta_graphs for fn in mg.graph_def.library.function
         for n in fn.node_def} | {n.op for mg in sm.meta_graphs for n in mg.graph_def.node}
  assert not {op for op in ops if 'Cudnn' in op}
  assert 'MatMul' in ops
  # A fresh interpreter that cannot import this project loads and runs it.
  code = ('import sys, tensorflow as tf; sys.modules["components"] = None; '
          'm = tf.saved_model.load(sys.argv[1]); '
          'print(m.signatures["generate"](prompt=tf.constant(["A"]), num_chars=tf.constant(5), '
          'temperature=tf.constant(1.0), seed=tf.constant(1, tf.int64))["text"].shape)')
  out = subprocess.run([sys.executable, '-c', code, path], capture_output=True, text=True,
                       cwd='/', env=dict(os.environ, PYTHONPATH=''), timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip().endswith('(1,)')
