"""What one request may ask of the server, and how many may compute at once.

Every limit here is checked *before* the server allocates for a request, from
what the client actually sent (bytes on the wire, values in a tensor), never
from what it declares (a shape, a Content-Length). Each is a server flag
(serving/server.py) with the default below; a refusal names the limit and its
value so that a client knows what to change:

  request bytes     gRPC `grpc.max_receive_message_length`, REST body (413)
  tensor elements   per input, after the declared shape agrees with the values
  batch rows        dimension 0 of every input
  bytes per string  one prompt / text row, counted before the graph pads rows
  work              rows x (longest string + num_chars): what `_encode` and the
                    generate loop really do, since every row is padded to the
                    longest one
  temperature       finite and >= 0 (the graph's own assert lets NaN through)

Capacity (`Admission`): at most `max_concurrent_predicts` requests compute at
once and at most `max_queued_predicts` wait; beyond that a request is refused
at once with RESOURCE_EXHAUSTED (REST 429) instead of joining an unbounded
queue. Status and metadata never pass through admission, so they answer while
every predict slot is busy.

Cancellation (`Call`): a request whose deadline passed or whose client went
away has its graph run cancelled through TensorFlow's CancellationManager
(it stops a running `tf.while_loop` between iterations: measured, a 64 x
10,000-character generate stops within milliseconds), so it stops using CPU
within about a second. Nothing is cut short otherwise, so an uncut run is the
same computation as before.
"""

import dataclasses
import logging
import math
import threading
import time
import uuid
from typing import Callable, Optional

import grpc
from tensorflow.python.eager import cancellation

from serving.models import RequestError

log = logging.getLogger('serving')


@dataclasses.dataclass(frozen=True)
class Limits:
  """Per-request and capacity limits (the flag of each is its name)."""
  max_request_bytes: int = 16 * 2**20
  max_tensor_elements: int = 4 * 2**20
  max_batch_rows: int = 1024
  max_string_bytes: int = 100_000
  max_request_work: int = 1_000_000
  max_concurrent_predicts: int = 4
  max_queued_predicts: int = 16

  def __post_init__(self):
    for field in dataclasses.fields(self):
      value = getattr(self, field.name)
      if not isinstance(value, int) or value < (0 if field.name == 'max_queued_predicts' else 1):
        raise ValueError(f'--{field.name} must be a positive integer, got {value!r}')


DESCRIPTIONS = {
    'max_request_bytes': 'largest request accepted, in bytes (gRPC message, REST body)',
    'max_tensor_elements': 'most values in one input tensor',
    'max_batch_rows': 'most rows (dimension 0) in one input',
    'max_string_bytes': 'longest string value (one prompt / text row), in bytes',
    'max_request_work': 'most character steps per request: rows x (longest string + num_chars)',
    'max_concurrent_predicts': 'predict requests computing at once',
    'max_queued_predicts': 'predict requests waiting for a slot; beyond: RESOURCE_EXHAUSTED / 429',
}


def invalid(message: str) -> RequestError:
  return RequestError(grpc.StatusCode.INVALID_ARGUMENT, message)


def exhausted(message: str) -> RequestError:
  return RequestError(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


# ------------------------------------------------------------------ cancellation
# TensorFlow keeps the "current CancellationManager" in one module global, so two
# threads that each wrap a call with CancellationManagerContext can swap each
# other's manager. We keep ours per thread and fall back to TensorFlow's global
# for anyone else in the process.
_local = threading.local()
_tf_context = cancellation.context


def _thread_context():
  return getattr(_local, 'manager', None) or _tf_context()


if cancellation.context is _tf_context:
  cancellation.context = _thread_context


class Call:
  """One request's deadline, liveness and cancellation, shared by gRPC and REST."""

  def __init__(self, deadline: Optional[float] = None,
               is_active: Optional[Callable[[], bool]] = None):
    self.request_id = uuid.uuid4().hex[:12]
    self.deadline = deadline              # time.monotonic() value, or None
    self._is_active = is_active
    self._manager = cancellation.CancellationManager()
    self._reason: Optional[grpc.StatusCode] = None
    self._lock = threading.Lock()

  @classmethod
  def from_timeout(cls, seconds: Optional[float], is_active=None) -> 'Call':
    return cls(None if seconds is None else time.monotonic() + seconds, is_active)

  def cancel(self, code: grpc.StatusCode = grpc.StatusCode.CANCELLED) -> None:
    with self._lock:
      if self._reason is None:
        self._reason = code
        self._manager.start_cancel()

  @property
  def cancelled(self) -> Optional[grpc.StatusCode]:
    return self._reason

  def check(self) -> None:
    """Cancels (and raises) when the deadline passed or the client went away."""
    if self._reason is None:
      if self.deadline is not None and time.monotonic() >= self.deadline:
        self.cancel(grpc.StatusCode.DEADLINE_EXCEEDED)
      elif self._is_active is not None and not self._is_active():
        self.cancel(grpc.StatusCode.CANCELLED)
    if self._reason is not None:
      raise self.error()

  def error(self) -> RequestError:
    if self._reason == grpc.StatusCode.DEADLINE_EXCEEDED:
      return RequestError(self._reason, 'Deadline Exceeded')
    return RequestError(self._reason or grpc.StatusCode.CANCELLED,
                        'Request cancelled: the client went away')

  def run(self, function, **kwargs):
    """Calls a ConcreteFunction so that `cancel()` stops it (CancelledError)."""
    _watcher.add(self)
    _local.manager = self._manager
    try:
      return function(**kwargs)
    finally:
      _local.manager = None
      _watcher.discard(self)


class _Watcher:
  """One thread that cancels running calls past their deadline or client."""

  PERIOD = 0.05

  def __init__(self):
    self._calls = set()
    self._lock = threading.Lock()
    self._thread = None

  def add(self, call: Call) -> None:
    with self._lock:
      self._calls.add(call)
      if self._thread is None:
        self._thread = threading.Thread(target=self._loop, name='cancel-watcher', daemon=True)
        self._thread.start()

  def discard(self, call: Call) -> None:
    with self._lock:
      self._calls.discard(call)

  def _loop(self):
    while True:
      time.sleep(self.PERIOD)
      with self._lock:
        calls = list(self._calls)
      for call in calls:
        try:
          call.check()
        except RequestError:
          pass
        except Exception:  # a broken is_active callback must not stop the watcher
          log.exception('Checking request %s for cancellation failed', call.request_id)


_watcher = _Watcher()


# ------------------------------------------------------------------ admission
class Admission:
  """At most N computing and Q waiting; the (N+Q+1)-th is refused at once."""

  def __init__(self, limits: Limits):
    self.limits = limits
    self._admitted = 0
    self._lock = threading.Lock()
    self._compute = threading.BoundedSemaphore(limits.max_concurrent_predicts)

  @property
  def capacity(self) -> int:
    return self.limits.max_concurrent_predicts + self.limits.max_queued_predicts

  def admit(self) -> 'Ticket':
    """Non-blocking: a ticket, or RESOURCE_EXHAUSTED when computing + waiting is full."""
    with self._lock:
      if self._admitted >= self.capacity:
        raise exhausted(
            f'Server busy: {self.limits.max_concurrent_predicts} predict requests computing and '
            f'{self.limits.max_queued_predicts} waiting (--max_concurrent_predicts='
            f'{self.limits.max_concurrent_predicts}, --max_queued_predicts='
            f'{self.limits.max_queued_predicts}); retry later')
      self._admitted += 1
    return Ticket(self)

  def _release(self) -> None:
    with self._lock:
      self._admitted -= 1

  @property
  def admitted(self) -> int:
    return self._admitted


class Ticket:
  """An admitted request: `compute(call)` waits for a compute slot (deadline-aware)."""

  def __init__(self, admission: Admission):
    self._admission = admission
    self._computing = False
    self._done = False

  def compute(self, call: Call) -> 'Ticket':
    while not self._admission._compute.acquire(timeout=0.1):
      call.check()
    self._computing = True
    return self

  def release(self) -> None:
    if self._done:
      return
    self._done = True
    if self._computing:
      self._admission._compute.release()
    self._admission._release()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def finite_temperature(value: float) -> None:
  if not math.isfinite(value) or value < 0:
    raise invalid(f'temperature must be >= 0 and finite (0 = greedy), got {value}')
