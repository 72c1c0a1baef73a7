"""Shared pieces for the serving tests (this module holds no tests).

* `tiny_version_dir()` exports one tiny char_rnn SavedModel per test process
  (GRU-16 over the real corpus' vocabulary) through components.model, exactly
  as the Trainer does; tests copy it to make more versions, which is cheap.
* `push()` copies a version the way the TFX Pusher does: every file first,
  saved_model.pb last.
* `serve()` runs serving.server's ModelServer in-process on 127.0.0.1 with
  ephemeral ports: a real gRPC server and a real HTTP server over loopback.
"""

import atexit
import contextlib
import datetime
import os
import shutil
import socket
import tempfile
from typing import Optional

from serving.models import single_model_config
from serving.server import ModelServer

REPO_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS_PATH = os.path.join(REPO_DIR, 'data', 'tinyshakespeare.txt')
MODEL_CONFIG = dict(embedding_dim=8, rnn_type='gru', rnn_units=16, num_layers=1, dropout=0.0)
STATE_SIZE = 16
MAX_GENERATE_CHARS = 10_000

_cache = {}


def corpus_chars() -> str:
  with open(CORPUS_PATH, encoding='utf-8') as f:
    return ''.join(sorted(set(f.read())))


def tiny_version_dir() -> str:
  """A SavedModel directory (one version) made once per process."""
  if 'dir' not in _cache:
    import numpy as np
    import tensorflow as tf
    from components.model import build_keras_model, export_serving_model
    from components.text import CharVocab
    root = tempfile.mkdtemp(prefix='serving_tiny_model_')
    atexit.register(shutil.rmtree, root, True)
    vocab = CharVocab.from_chars(corpus_chars())
    tf.keras.utils.set_random_seed(0)
    model = build_keras_model(len(vocab), **MODEL_CONFIG)
    rng = np.random.default_rng(0)   # spread the logits so sampling is not uniform
    model.set_weights([w + rng.normal(0, 0.5, w.shape).astype(w.dtype)
                       for w in model.get_weights()])
    path = os.path.join(root, 'export')
    export_serving_model(model, vocab.tokens, MODEL_CONFIG, MAX_GENERATE_CHARS, path)
    _cache['dir'] = path
  return _cache['dir']


def slow_version_dir(rnn_units: int = 256) -> str:
  """A GRU-`rnn_units` SavedModel (random weights) whose 64 x 10,000-char generate takes
  many seconds on a CPU: for deadline and cancellation tests. Made once per process."""
  key = f'slow{rnn_units}'
  if key not in _cache:
    import tensorflow as tf
    from components.model import build_keras_model, export_serving_model
    from components.text import CharVocab
    root = tempfile.mkdtemp(prefix='serving_slow_model_')
    atexit.register(shutil.rmtree, root, True)
    vocab = CharVocab.from_chars(corpus_chars())
    config = dict(MODEL_CONFIG, embedding_dim=32, rnn_units=rnn_units)
    tf.keras.utils.set_random_seed(0)
    model = build_keras_model(len(vocab), **config)
    path = os.path.join(root, 'export')
    export_serving_model(model, vocab.tokens, config, MAX_GENERATE_CHARS, path)
    _cache[key] = path
  return _cache[key]


def push(base_path: str, version: int, source: Optional[str] = None,
         with_saved_model_pb: bool = True) -> str:
  """Copies `source` to base_path/version like the Pusher (saved_model.pb last)."""
  source = source or tiny_version_dir()
  target = os.path.join(base_path, str(version))
  shutil.copytree(source, target, ignore=shutil.ignore_patterns('saved_model.pb'))
  if with_saved_model_pb:
    shutil.copy2(os.path.join(source, 'saved_model.pb'), target)
  return target


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


@contextlib.contextmanager
def serve(config=None, *, base_path: Optional[str] = None, model_name: str = 'char_rnn',
          **kwargs):
  """An in-process ModelServer on 127.0.0.1 (gRPC + REST on free ports)."""
  if config is None:
    config = single_model_config(model_name, base_path)
  kwargs.setdefault('grpc_port', 0)
  kwargs.setdefault('rest_port', 0)
  kwargs.setdefault('poll_seconds', 0)   # tests poll explicitly unless they ask
  server = ModelServer(config, host='127.0.0.1', **kwargs).start()
  try:
    yield server
  finally:
    server.stop(grace=0.5)


def make_tls_material(directory: str, hostname: str = 'localhost'):
  """A CA, a server cert for hostname/127.0.0.1 and a client cert, all signed by the CA."""
  import ipaddress
  from cryptography import x509
  from cryptography.hazmat.primitives import hashes, serialization
  from cryptography.hazmat.primitives.asymmetric import ec
  from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

  now = datetime.datetime.now(datetime.timezone.utc)

  def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

  def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())

  ca_key = ec.generate_private_key(ec.SECP256R1())
  ca_cert = (x509.CertificateBuilder().subject_name(name('char-rnn test CA'))
             .issuer_name(name('char-rnn test CA')).public_key(ca_key.public_key())
             .serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
             .sign(ca_key, hashes.SHA256()))

  def leaf(cn, usage, sans):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder().subject_name(name(cn)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if sans:
      builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return key_pem(key), cert.public_bytes(serialization.Encoding.PEM)

  server_key, server_cert = leaf(hostname, ExtendedKeyUsageOID.SERVER_AUTH, [
      x509.DNSName(hostname), x509.IPAddress(ipaddress.ip_address('127.0.0.1'))])
  client_key, client_cert = leaf('char-rnn test client', ExtendedKeyUsageOID.CLIENT_AUTH, [])
  material = {'ca.pem': ca_cert.public_bytes(serialization.Encoding.PEM),
              'server.key': server_key, 'server.pem': server_cert,
              'client.key': client_key, 'client.pem': client_cert}
  for filename, data in material.items():
    with open(os.path.join(directory, filename), 'wb') as f:
      f.write(data)
  return material
