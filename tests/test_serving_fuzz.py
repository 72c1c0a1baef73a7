"""Property-based fuzzing of the request decoders: any input gives a result or RequestError.

The decoders are what a client controls byte for byte: the REST body
(json_codec.decode_body -> predict_request -> value_to_tensor_proto) and a gRPC
TensorProto (predict.tensor_proto_to_input). For arbitrary JSON values, raw
bytes and TensorProtos with any dtype, shape and value fields, each must return
(within the limits: nothing larger than what was sent) or raise RequestError
with INVALID_ARGUMENT; never another exception. Bounded: 200 examples each, no
deadline (the machine is shared).
"""

import grpc
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tensorflow.core.framework import tensor_pb2, types_pb2
from tensorflow_serving.apis import model_pb2

from serving import json_codec, predict
from serving.limits import Limits
from serving.models import RequestError

LIMITS = Limits(max_tensor_elements=4096, max_string_bytes=64)
FUZZ = settings(max_examples=200, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                      st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20),
                      st.fixed_dictionaries({'b64': st.text(max_size=12)}))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
    max_leaves=30)
dtypes = st.sampled_from([types_pb2.DT_STRING, types_pb2.DT_FLOAT, types_pb2.DT_INT32,
                          types_pb2.DT_INT64, types_pb2.DT_BOOL, types_pb2.DT_DOUBLE,
                          types_pb2.DT_UINT8, types_pb2.DT_HALF, types_pb2.DT_COMPLEX64])
GENERATE_INPUTS = {'prompt': types_pb2.DT_STRING, 'num_chars': types_pb2.DT_INT32,
                   'temperature': types_pb2.DT_FLOAT, 'seed': types_pb2.DT_INT64}


def _refused(e: RequestError) -> None:
  assert e.code == grpc.StatusCode.INVALID_ARGUMENT and e.message


@FUZZ
@given(value=json_value, dtype=dtypes)
def test_json_value_to_tensor_proto_gives_a_proto_or_invalid_argument(value, dtype):
  try:
    proto = json_codec.value_to_tensor_proto('x', value, dtype, LIMITS)
  except RequestError as e:
    _refused(e)
    return
  # What it produced decodes again under the same limits (or is refused, typed).
  try:
    array, _ = predict.tensor_proto_to_input('x', proto, LIMITS)
    assert array.size <= LIMITS.max_tensor_elements
  except RequestError as e:
    _refused(e)


@FUZZ
@given(body=st.one_of(st.binary(max_size=200), json_value.map(
    lambda v: __import__('json').dumps(v).encode())))
def test_rest_body_decoding_gives_a_request_or_invalid_argument(body):
  try:
    request_json = json_codec.decode_body(body)
    request, fmt = json_codec.predict_request(request_json, model_pb2.ModelSpec(name='m'),
                                              'generate', GENERATE_INPUTS, LIMITS)
  except RequestError as e:
    _refused(e)
    return
  assert fmt in ('row', 'columnar')
  for alias, proto in request.inputs.items():
    try:
      predict.tensor_proto_to_input(alias, proto, LIMITS)
    except RequestError as e:
      _refused(e)


@st.composite
def tensor_protos(draw):
  proto = tensor_pb2.TensorProto(dtype=draw(st.one_of(dtypes, st.integers(0, 200))))
  if draw(st.booleans()):
    proto.tensor_shape.unknown_rank = True
  for d in draw(st.lists(st.integers(-3, 2**62), max_size=4)):
    proto.tensor_shape.dim.add(size=d)
  which = draw(st.sampled_from(['float_val', 'double_val', 'int_val', 'int64_val', 'bool_val',
                                'string_val', 'half_val', 'uint32_val', 'uint64_val',
                                'tensor_content', 'none']))
  n = draw(st.integers(0, 8))
  if which == 'tensor_content':
    proto.tensor_content = draw(st.binary(max_size=64))
  elif which == 'string_val':
    proto.string_val.extend(draw(st.lists(st.binary(max_size=80), max_size=n)))
  elif which in ('float_val', 'double_val'):
    getattr(proto, which).extend(draw(st.lists(st.floats(width=32), max_size=n)))
  elif which == 'int_val':
    proto.int_val.extend(draw(st.lists(st.integers(-2**31, 2**31 - 1), max_size=n)))
  elif which == 'int64_val':
    proto.int64_val.extend(draw(st.lists(st.integers(-2**63, 2**63 - 1), max_size=n)))
  elif which == 'half_val':
    proto.half_val.extend(draw(st.lists(st.integers(0, 2**31 - 1), max_size=n)))
  elif which == 'uint32_val':
    proto.uint32_val.extend(draw(st.lists(st.integers(0, 2**32 - 1), max_size=n)))
  elif which == 'uint64_val':
    proto.uint64_val.extend(draw(st.lists(st.integers(0, 2**64 - 1), max_size=n)))
  elif which == 'bool_val':
    proto.bool_val.extend(draw(st.lists(st.booleans(), max_size=n)))
  return proto


@FUZZ
@given(proto=tensor_protos())
def test_tensor_proto_decoding_gives_an_array_of_what_was_sent_or_invalid_argument(proto):
  try:
    array, dtype = predict.tensor_proto_to_input('x', proto, LIMITS)
  except RequestError as e:
    _refused(e)
    return
  sent = (len(proto.tensor_content) if proto.tensor_content else
          sum(len(getattr(proto, f)) for f in ('float_val', 'double_val', 'int_val', 'int64_val',
                                                'bool_val', 'string_val', 'half_val',
                                                'uint32_val', 'uint64_val')))
  assert isinstance(array, np.ndarray)
  assert array.size <= max(sent, 0) or array.size == 0
  assert list(array.shape) == [d.size for d in proto.tensor_shape.dim]
  assert dtype.as_datatype_enum == proto.dtype
