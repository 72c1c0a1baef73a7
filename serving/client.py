"""Client for char_rnn on TensorFlow Serving (or serving.server): library and CLI.

Speaks only TF Serving's gRPC API (tensorflow_serving.apis stubs), so it works
unchanged against the real `tensorflow_model_server` and against our server.

Library::

    from serving.client import Client
    with Client('localhost:8500') as c:
        c.generate(['ROMEO:'], num_chars=500, temperature=1.0, seed=7)   # -> ['...']
        for ch in c.stream('ROMEO:', num_chars=100): print(ch, end='')
        c.score(['To be, or not to be'])     # -> [Score(log_likelihood, bits_per_char, ...)]

* `generate` is one round trip to the `generate` signature (the loop runs in the
  server's graph); `stream` is one `one_step` round trip per character with the
  RNN state carried by the client, as in the tutorial, pinned to the version that
  answered the first step (another version's state would be meaningless).
* The state size and the signatures come from GetModelMetadata, never from code.
* Failures raise `ServingError` subclasses carrying the gRPC code; only
  UNAVAILABLE (server starting, restarting, connection refused) is retried, with
  exponential back-off. Every call has a deadline.

CLI (common flags go after the subcommand)::

    python -m serving.client generate --prompt "ROMEO:" --num-chars 500
    python -m serving.client stream --prompt "ROMEO:" --num-chars 200 --temperature 0.8
    python -m serving.client score --text "To be, or not to be"
    python -m serving.client metadata | status
      [--target localhost:8500] [--model char_rnn] [--version N | --label L]
      [--timeout 60] [--retries 4] [--root-cert ca.pem [--client-cert c.pem --client-key k.pem]
      [--server-name host]] [--max-message-mb 64]
"""

import argparse
import dataclasses
import math
import os
import random
import sys
import time
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

if __name__ == '__main__':
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')   # before TensorFlow is imported
  import warnings
  warnings.filterwarnings('ignore', category=FutureWarning)   # google.api_core's Python-version notice

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2, model_pb2,
                                     model_service_pb2_grpc, predict_pb2,
                                     prediction_service_pb2_grpc)

DEFAULT_TARGET = 'localhost:8500'
DEFAULT_MODEL = 'char_rnn'


# ------------------------------------------------------------------ errors
class ServingError(Exception):
  """A failed call: `code` is the grpc.StatusCode, `details` the server's message."""

  def __init__(self, code: grpc.StatusCode, details: str, target: str = ''):
    super().__init__(f'{code.name}: {details}')
    self.code = code
    self.details = details
    self.target = target


class NotFoundError(ServingError):
  """Unknown model or version (or no version loaded yet)."""


class InvalidArgumentError(ServingError):
  """The request does not fit the signature, or the model rejected a value."""


class FailedPreconditionError(ServingError):
  """Unknown signature name."""


class DeadlineExceededError(ServingError):
  """The call did not finish within its deadline."""


class UnavailableError(ServingError):
  """No server reachable at the target (after the retries)."""


_ERROR_CLASSES = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
}


def _error_from_rpc(e: grpc.RpcError, target: str) -> ServingError:
  code = e.code() if hasattr(e, 'code') else grpc.StatusCode.UNKNOWN
  details = (e.details() if hasattr(e, 'details') else '') or str(e)
  return _ERROR_CLASSES.get(code, ServingError)(code, details, target)


# ------------------------------------------------------------------ results
@dataclasses.dataclass
class Score:
  text: str
  log_likelihood: float   # natural log, summed over every character after the first
  num_scored: int

  @property
  def nats_per_char(self) -> float:
    return -self.log_likelihood / self.num_scored if self.num_scored else float('nan')

  @property
  def bits_per_char(self) -> float:
    return self.nats_per_char / math.log(2)

  @property
  def perplexity(self) -> float:
    return math.exp(self.nats_per_char) if self.num_scored else float('nan')


@dataclasses.dataclass
class PredictResult:
  outputs: Dict[str, np.ndarray]
  model_version: int
  signature_name: str


@dataclasses.dataclass
class TensorSpec:
  dtype: tf.DType
  shape: Optional[List[Optional[int]]]   # None = unknown rank; None dims = any size


@dataclasses.dataclass
class ModelInfo:
  name: str
  version: int
  signatures: Dict[str, Dict[str, Dict[str, TensorSpec]]]   # sig -> inputs/outputs -> spec

  @property
  def state_size(self) -> int:
    """S in the one_step signature's `states` input, float32[B, S]."""
    try:
      return int(self.signatures['one_step']['inputs']['states'].shape[1])
    except (KeyError, TypeError, IndexError):
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         f'model {self.name} version {self.version} has no one_step signature '
                         'with a states[B, S] input') from None


@dataclasses.dataclass
class VersionStatus:
  version: int
  state: str            # START, LOADING, AVAILABLE, UNLOADING, END
  error_code: str       # 'OK' unless the version failed
  error_message: str


def _spec(info) -> TensorSpec:
  shape = None if info.tensor_shape.unknown_rank else [
      d.size if d.size >= 0 else None for d in info.tensor_shape.dim]
  return TensorSpec(tf.dtypes.as_dtype(info.dtype), shape)


# ------------------------------------------------------------------ client
class Client:
  """One channel to a TF Serving endpoint, for one model (optionally a pinned version/label)."""

  def __init__(self, target: str = DEFAULT_TARGET, model_name: str = DEFAULT_MODEL, *,
               version: Optional[int] = None, label: Optional[str] = None,
               timeout: float = 60.0, retries: int = 4, backoff: float = 0.25,
               max_backoff: float = 5.0,
               root_certificates: Optional[bytes] = None,
               private_key: Optional[bytes] = None,
               certificate_chain: Optional[bytes] = None,
               tls: Optional[bool] = None, server_name: Optional[str] = None,
               max_message_bytes: int = 64 * 1024 * 1024,
               channel: Optional[grpc.Channel] = None):
    if version is not None and label is not None:
      raise ValueError('pin a version or a label, not both')
    self.target = target
    self.model_name = model_name
    self.version = version
    self.label = label
    self.timeout = timeout
    self.retries = retries
    self.backoff = backoff
    self.max_backoff = max_backoff
    options = [('grpc.max_send_message_length', max_message_bytes),
               ('grpc.max_receive_message_length', max_message_bytes)]
    if server_name:
      options.append(('grpc.ssl_target_name_override', server_name))
    if channel is None:
      secure = tls if tls is not None else bool(root_certificates or certificate_chain)
      if secure:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=root_certificates, private_key=private_key,
            certificate_chain=certificate_chain)
        channel = grpc.secure_channel(target, credentials, options=options)
      else:
        channel = grpc.insecure_channel(target, options=options)
    self._channel = channel
    self._predict = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    self._models = model_service_pb2_grpc.ModelServiceStub(channel)
    self._info: Dict[Optional[int], ModelInfo] = {}

  # -------------------------------------------------------------- plumbing
  def close(self) -> None:
    self._channel.close()

  def __enter__(self) -> 'Client':
    return self

  def __exit__(self, *exc) -> None:
    self.close()

  def model_spec(self, signature_name: str = '', version: Optional[int] = None):
    spec = model_pb2.ModelSpec(name=self.model_name, signature_name=signature_name)
    if version is not None or self.version is not None:
      spec.version.value = version if version is not None else self.version
    elif self.label is not None:
      spec.version_label = self.label
    return spec

  def _call(self, method, request, timeout: Optional[float] = None):
    """One RPC with a deadline; retried with back-off on UNAVAILABLE only."""
    attempt = 0
    while True:
      try:
        return method(request, timeout=timeout or self.timeout)
      except grpc.RpcError as e:
        if e.code() != grpc.StatusCode.UNAVAILABLE or attempt >= self.retries:
          raise _error_from_rpc(e, self.target) from None
      delay = min(self.max_backoff, self.backoff * 2 ** attempt)
      time.sleep(delay * random.uniform(0.5, 1.0))
      attempt += 1

  # -------------------------------------------------------------- generic
  def predict(self, signature_name: str, inputs: Mapping[str, object], *,
              version: Optional[int] = None, output_filter: Sequence[str] = (),
              timeout: Optional[float] = None) -> PredictResult:
    """Runs any signature: inputs are {alias: (value, dtype) or value}."""
    request = predict_pb2.PredictRequest(model_spec=self.model_spec(signature_name, version),
                                         output_filter=list(output_filter))
    for alias, value in inputs.items():
      value, dtype = value if isinstance(value, tuple) else (value, None)
      request.inputs[alias].CopyFrom(tf.make_tensor_proto(value, dtype=dtype))
    response = self._call(self._predict.Predict, request, timeout)
    return PredictResult(
        outputs={k: tf.make_ndarray(v) for k, v in response.outputs.items()},
        model_version=response.model_spec.version.value,
        signature_name=response.model_spec.signature_name)

  def metadata(self, version: Optional[int] = None) -> ModelInfo:
    """Signatures (names, dtypes, shapes) of the served (or pinned) version."""
    request = get_model_metadata_pb2.GetModelMetadataRequest(
        model_spec=self.model_spec(version=version), metadata_field=['signature_def'])
    response = self._call(self._predict.GetModelMetadata, request)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata['signature_def'].Unpack(signature_map)
    signatures = {
        name: {'inputs': {k: _spec(v) for k, v in sig.inputs.items()},
               'outputs': {k: _spec(v) for k, v in sig.outputs.items()}}
        for name, sig in signature_map.signature_def.items()}
    info = ModelInfo(response.model_spec.name, response.model_spec.version.value, signatures)
    self._info[info.version] = info
    return info

  def status(self) -> List[VersionStatus]:
    request = get_model_status_pb2.GetModelStatusRequest(model_spec=self.model_spec())
    response = self._call(self._models.GetModelStatus, request)
    states = get_model_status_pb2.ModelVersionStatus.State
    names = {c.value[0]: c.name for c in grpc.StatusCode}
    return [VersionStatus(s.version, states.Name(s.state), names.get(s.status.error_code, '?'),
                          s.status.error_message) for s in response.model_version_status]

  # -------------------------------------------------------------- char_rnn
  def generate(self, prompts: Union[str, Sequence[str]], num_chars: int = 500,
               temperature: float = 1.0, seed: Optional[int] = None,
               timeout: Optional[float] = None) -> List[str]:
    """Continuations (without the prompt) of each prompt, one round trip for the batch.

    `seed` makes sampling reproducible for a given model version; None picks one.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if seed is None:
      seed = random.getrandbits(62)
    result = self.predict('generate', {
        'prompt': (prompts, tf.string),
        'num_chars': (num_chars, tf.int32),
        'temperature': (temperature, tf.float32),
        'seed': (seed, tf.int64)}, output_filter=['text'], timeout=timeout)
    return [t.decode('utf-8', errors='replace') for t in result.outputs['text']]

  def stream(self, prompt: str, num_chars: int = 500, temperature: float = 1.0,
             timeout: Optional[float] = None) -> Iterator[str]:
    """Yields `num_chars` characters, one `one_step` round trip each (tutorial style).

    The state lives here and goes back with each request. Every step after the
    first is pinned to the version that served the first step.
    """
    info = self.metadata()
    states = np.zeros([1, info.state_size], np.float32)
    version = None
    text = prompt
    for _ in range(num_chars):
      result = self.predict('one_step', {
          'inputs': ([text], tf.string),
          'states': (states, tf.float32),
          'temperature': (temperature, tf.float32)},
          version=version, output_filter=['chars', 'states'], timeout=timeout)
      version = result.model_version
      states = result.outputs['states']
      text = result.outputs['chars'][0].decode('utf-8', errors='replace')
      yield text

  def score(self, texts: Union[str, Sequence[str]], timeout: Optional[float] = None) -> List[Score]:
    """Log-likelihood of each text under the model, with bits/char and perplexity."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    result = self.predict('score', {'text': (texts, tf.string)}, timeout=timeout)
    return [Score(t, float(ll), int(n)) for t, ll, n in zip(
        texts, result.outputs['log_likelihood'], result.outputs['num_scored'])]


# ------------------------------------------------------------------ CLI
_HINTS = {
    grpc.StatusCode.UNAVAILABLE: 'is a server running at {target}? (make serve)',
    grpc.StatusCode.NOT_FOUND: 'check --model/--version/--label and `status`; '
                               'has a version been pushed and loaded?',
    grpc.StatusCode.DEADLINE_EXCEEDED: 'raise --timeout, or ask for fewer characters',
    grpc.StatusCode.FAILED_PRECONDITION: 'see `metadata` for the signatures this model has',
}


def _read(path: Optional[str]) -> Optional[bytes]:
  if not path:
    return None
  with open(path, 'rb') as f:
    return f.read()


def build_arg_parser() -> argparse.ArgumentParser:
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument('--target', default=DEFAULT_TARGET, help='host:port of the gRPC API')
  common.add_argument('--model', default=DEFAULT_MODEL, help='model name')
  pin = common.add_mutually_exclusive_group()
  pin.add_argument('--version', type=int, help='pin a model version')
  pin.add_argument('--label', help='pin a version label (from the server config)')
  common.add_argument('--timeout', type=float, default=60.0, help='deadline per call, seconds')
  common.add_argument('--retries', type=int, default=4, help='retries on UNAVAILABLE')
  common.add_argument('--tls', action='store_true', help='TLS with the system roots')
  common.add_argument('--root-cert', help='PEM file of the CA that signed the server cert')
  common.add_argument('--client-cert', help='PEM client certificate (mutual TLS)')
  common.add_argument('--client-key', help='PEM client private key (mutual TLS)')
  common.add_argument('--server-name', help='TLS name to verify instead of the target host')
  common.add_argument('--max-message-mb', type=int, default=64)

  p = argparse.ArgumentParser(prog='python -m serving.client',
                              description='Talk to char_rnn on TensorFlow Serving over gRPC.')
  sub = p.add_subparsers(dest='command', required=True)
  g = sub.add_parser('generate', parents=[common], help='generate text (one round trip)')
  g.add_argument('--prompt', action='append', help='repeat for a batch (default ROMEO:)')
  g.add_argument('--num-chars', type=int, default=500)
  g.add_argument('--temperature', type=float, default=1.0)
  g.add_argument('--seed', type=int, help='reproducible sampling (default: random)')
  g.add_argument('--no-prompt', action='store_true', help='print only the continuation')
  s = sub.add_parser('stream', parents=[common], help='print characters as they come (one_step)')
  s.add_argument('--prompt', default='ROMEO:')
  s.add_argument('--num-chars', type=int, default=500)
  s.add_argument('--temperature', type=float, default=1.0)
  c = sub.add_parser('score', parents=[common], help='log-likelihood, bits/char, perplexity')
  c.add_argument('--text', action='append', help='text to score (repeatable)')
  c.add_argument('--file', help='score the contents of this file ("-" = stdin)')
  sub.add_parser('metadata', parents=[common], help="signatures of the served version")
  sub.add_parser('status', parents=[common], help='versions and their states (exit 1 if none '
                 'is AVAILABLE)')
  return p


def _client(args) -> Client:
  return Client(args.target, args.model, version=args.version, label=args.label,
                timeout=args.timeout, retries=args.retries,
                root_certificates=_read(args.root_cert), private_key=_read(args.client_key),
                certificate_chain=_read(args.client_cert), tls=args.tls or None,
                server_name=args.server_name, max_message_bytes=args.max_message_mb << 20)


def _run(args, out) -> int:
  with _client(args) as client:
    if args.command == 'generate':
      prompts = args.prompt or ['ROMEO:']
      texts = client.generate(prompts, args.num_chars, args.temperature, args.seed)
      for i, (prompt, text) in enumerate(zip(prompts, texts)):
        if i:
          out.write('\n-----\n')
        out.write(text if args.no_prompt else prompt + text)
      out.write('\n')
    elif args.command == 'stream':
      out.write(args.prompt)
      for ch in client.stream(args.prompt, args.num_chars, args.temperature):
        out.write(ch)
        out.flush()
      out.write('\n')
    elif args.command == 'score':
      texts = list(args.text or [])
      if args.file:
        texts.append(sys.stdin.read() if args.file == '-' else open(args.file, encoding='utf-8').read())
      if not texts:
        raise ValueError('give --text or --file')
      out.write(f'{"log-likelihood":>15} {"chars":>7} {"bits/char":>9} {"perplexity":>10}  text\n')
      for s in client.score(texts):
        preview = s.text[:40].replace('\n', '\\n')
        out.write(f'{s.log_likelihood:15.3f} {s.num_scored:7d} {s.bits_per_char:9.4f} '
                  f'{s.perplexity:10.3f}  {preview}\n')
    elif args.command == 'metadata':
      info = client.metadata()
      out.write(f'model {info.name} version {info.version} (state size {info.state_size})\n')
      for name, sig in sorted(info.signatures.items()):
        def fmt(specs):
          return ', '.join(f'{k} {v.dtype.name}{v.shape if v.shape is not None else "[?]"}'
                           .replace('None', '?') for k, v in sorted(specs.items()))
        out.write(f'  {name}({fmt(sig["inputs"])}) -> {fmt(sig["outputs"])}\n')
    elif args.command == 'status':
      versions = client.status()
      for v in versions:
        error = f' {v.error_code}: {v.error_message}' if v.error_code != 'OK' else ''
        out.write(f'{client.model_name} version {v.version}: {v.state}{error}\n')
      return 0 if any(v.state == 'AVAILABLE' for v in versions) else 1
  return 0


def main(argv=None) -> int:
  args = build_arg_parser().parse_args(argv)
  try:
    return _run(args, sys.stdout)
  except ServingError as e:
    print(f'error: {e}', file=sys.stderr)
    hint = _HINTS.get(e.code)
    if hint:
      print(f'hint: {hint.format(target=args.target)}', file=sys.stderr)
    return 1
  except (OSError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    return 130


if __name__ == '__main__':
  sys.exit(main())
