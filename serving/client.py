"""Client library for char_rnn on TensorFlow Serving (or serving.server).

Speaks only TF Serving's gRPC API (tensorflow_serving.apis stubs), so it works
unchanged against the real `tensorflow_model_server` and against our server.
The command line that wraps it lives beside it in serving/cli.py
(`python -m serving.cli generate|stream|score|metadata|status`); this module is
only the library, so importing it parses no arguments and prints nothing.

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
* Failures raise `ServingError` subclasses carrying the gRPC code. Two codes are
  retried, with jittered exponential back-off, at most `retries` times: UNAVAILABLE
  (server starting, restarting, connection refused) and RESOURCE_EXHAUSTED when it
  means "server at capacity" (its admission queue is full: the request was refused
  before it ran, so sending it again is safe; `generate` picks its seed before the
  first try, so a retried call returns what the first would have). A
  RESOURCE_EXHAUSTED about message size ("larger than max") is the request's own
  fault and is raised at once. Every call has a deadline. `retry_counts` counts
  the retries made, per code name.

`python -m serving.client ...` still runs the CLI, as a deprecated alias of
`python -m serving.cli ...` (same flags, same output), so old command lines work.
"""

import collections
import dataclasses
import math
import os
import random
import sys
import threading
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


class ResourceExhaustedError(ServingError):
  """The server is at capacity (after the retries), or a message is over a size limit."""


_ERROR_CLASSES = {
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPreconditionError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}

# gRPC's own RESOURCE_EXHAUSTED for a message over a size limit ("Received message
# larger than max (N vs. M)", "Sent message larger than max ..."): sending the same
# bytes again cannot succeed.
_MESSAGE_SIZE_MARKERS = ('larger than max', 'message larger', 'message too large')


def _retryable(e: grpc.RpcError) -> bool:
  code = e.code() if hasattr(e, 'code') else None
  if code == grpc.StatusCode.UNAVAILABLE:
    return True
  if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
    details = ((e.details() if hasattr(e, 'details') else '') or '').lower()
    return not any(marker in details for marker in _MESSAGE_SIZE_MARKERS)
  return False


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
    self.retry_counts: collections.Counter = collections.Counter()   # code name -> retries
    self._count_lock = threading.Lock()   # one Client may serve many threads

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
    """One RPC with a deadline; UNAVAILABLE and capacity RESOURCE_EXHAUSTED retried with back-off."""
    attempt = 0
    while True:
      try:
        return method(request, timeout=timeout or self.timeout)
      except grpc.RpcError as e:
        if not _retryable(e) or attempt >= self.retries:
          raise _error_from_rpc(e, self.target) from None
        with self._count_lock:
          self.retry_counts[e.code().name] += 1
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


if __name__ == '__main__':   # deprecated alias: `python -m serving.client ...` -> serving.cli
  from serving import cli   # pylint: disable=g-import-not-at-top
  print('note: `python -m serving.client` is deprecated; use `python -m serving.cli` '
        '(same subcommands and flags)', file=sys.stderr)
  sys.exit(cli.main())
