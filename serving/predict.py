"""Runs one signature of a loaded version on request tensors, with TF Serving's checks.

Shared by the gRPC Predict handler and the REST `:predict` handler so that both
APIs validate the same way and fail with the same codes and messages:

* unknown signature -> FAILED_PRECONDITION `Serving signature key "x" not found.`
* missing/extra inputs -> INVALID_ARGUMENT `input size does not match signature: ...`
  (TF Serving's exact text: counts, both key sets, what was extra and missing)
* wrong dtype -> INVALID_ARGUMENT `Expects arg[i] to be float but string is provided`
  (the TF runtime's text, which TF Serving passes through)
* wrong shape -> INVALID_ARGUMENT naming the input, the signature's shape and the sent one
* op errors (e.g. the model's own `tf.debugging` asserts) keep the TF error code.

The signature runs in the calling thread; TensorFlow releases the GIL while it
computes, so one slow request does not hold up the others.
"""

import re
from typing import Dict, Iterable, Mapping, Optional, Tuple

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_shape_pb2, types_pb2

from serving.models import DEFAULT_SIGNATURE, GRPC_CODE_BY_NUMBER, Servable, ServingError

# "...message\n\t [[{{node foo}}]]" and the "Graph execution error:" preamble are
# noise for a client; the first line of the op's message is what it needs.
_NODE_SUFFIX = re.compile(r'\s*\[\[\{\{(function_)?node [^\n]*$', re.S)
_DETECTED_AT = re.compile(r'Detected at node .*?<stack traces unavailable>\s*', re.S)


def dtype_text(dtype: tf.DType) -> str:
  """TF's runtime spelling of a dtype ('float', 'string', 'int32'), as in its messages."""
  return types_pb2.DataType.Name(dtype.as_datatype_enum)[3:].lower()


def signature_def(servable: Servable, signature_name: str):
  name = signature_name or DEFAULT_SIGNATURE
  if name not in servable.signature_defs:
    raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                       f'Serving signature key "{name}" not found.')
  return name, servable.signature_defs[name]


def shape_text(shape: tensor_shape_pb2.TensorShapeProto) -> str:
  if shape.unknown_rank:
    return '<unknown>'
  return '[' + ','.join('?' if d.size < 0 else str(d.size) for d in shape.dim) + ']'


def _check_inputs_match(signature, sent: Iterable[str]) -> None:
  sent = set(sent)
  wanted = set(signature.inputs)
  if sent != wanted:
    def join(keys):
      return ','.join(sorted(keys))
    raise ServingError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f'input size does not match signature: {len(sent)}!={len(wanted)} '
        f'len({{{join(sent)}}}) != len({{{join(wanted)}}}). '
        f'Sent extra: {{{join(sent - wanted)}}}. Missing but required: {{{join(wanted - sent)}}}.')


def _check_tensor(index: int, alias: str, info, array: np.ndarray, dtype: tf.DType) -> None:
  want = tf.dtypes.as_dtype(info.dtype)
  if dtype != want:
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f'Expects arg[{index}] to be {dtype_text(want)} but {dtype_text(dtype)} is provided '
                       f'(input "{alias}")')
  shape = info.tensor_shape
  if shape.unknown_rank:
    return
  dims = [d.size for d in shape.dim]
  if len(dims) != array.ndim or any(w >= 0 and w != g for w, g in zip(dims, array.shape)):
    got = '[' + ','.join(str(s) for s in array.shape) + ']'
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f'input "{alias}" must have shape {shape_text(shape)} '
                       f'(the signature\'s; ? = any size) but has shape {got}')


def op_error(e: tf.errors.OpError) -> ServingError:
  message = _NODE_SUFFIX.sub('', e.message).strip()
  message = message.replace('Graph execution error:', '').strip()
  message = _DETECTED_AT.sub('', message).strip()
  return ServingError(GRPC_CODE_BY_NUMBER.get(e.error_code, grpc.StatusCode.UNKNOWN), message)


def run(servable: Servable, signature_name: str,
        inputs: Mapping[str, Tuple[np.ndarray, tf.DType]],
        output_filter: Iterable[str] = ()) -> Tuple[str, Dict[str, np.ndarray]]:
  """Validates and runs; returns (signature name used, {output alias: array})."""
  name, signature = signature_def(servable, signature_name)
  _check_inputs_match(signature, inputs)
  for index, alias in enumerate(sorted(inputs)):
    array, dtype = inputs[alias]
    _check_tensor(index, alias, signature.inputs[alias], array, dtype)
  wanted_outputs = list(output_filter) or sorted(signature.outputs)
  for alias in wanted_outputs:
    if alias not in signature.outputs:
      raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                         f'output tensor alias not found in signature: {alias} '
                         f'Outputs expected to be in the set {{{",".join(sorted(signature.outputs))}}}.')
  tensors = {alias: tf.constant(array, dtype=dtype) for alias, (array, dtype) in inputs.items()}
  try:
    outputs = servable.function(name)(**tensors)
  except tf.errors.OpError as e:
    raise op_error(e) from None
  return name, {alias: outputs[alias].numpy() for alias in wanted_outputs}


def tensor_proto_to_input(alias: str, proto) -> Tuple[np.ndarray, tf.DType]:
  try:
    dtype = tf.dtypes.as_dtype(proto.dtype)
    return np.asarray(tf.make_ndarray(proto)), dtype
  except Exception as e:  # malformed protos must not take the server down
    raise ServingError(grpc.StatusCode.INVALID_ARGUMENT,
                       f'tensor parsing error: {alias} ({e})') from None


def array_to_tensor_proto(array: np.ndarray, dtype: Optional[tf.DType] = None):
  return tf.make_tensor_proto(array, dtype=dtype)
