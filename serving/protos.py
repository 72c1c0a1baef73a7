"""TF Serving config messages that the tensorflow-serving-api wheel does not ship.

The wheel carries `ModelServerConfig` (tensorflow_serving/config) but not
`SSLConfig` (tensorflow_serving/config/ssl_config.proto) nor `BatchingParameters`
(tensorflow_serving/servables/tensorflow/session_bundle_config.proto). The real
server reads both as text protos (`--ssl_config_file`, `--batching_parameters_file`),
so we build the same messages here, with the same package, names and field
numbers, from a `FileDescriptorProto` (BatchingParameters: the fields 1-7 that
every TF Serving release since 1.x has; newer optional fields are left out). A file that the real binary accepts parses
here and the other way round; `tests/test_serving_config.py` pins that.
"""

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format
from google.protobuf import wrappers_pb2  # noqa: F401  (puts wrappers.proto in the pool)
from tensorflow_serving.config import model_server_config_pb2

_F = descriptor_pb2.FieldDescriptorProto


def _field(msg, name, number, ftype, label=_F.LABEL_OPTIONAL, type_name=None):
  f = msg.field.add(name=name, number=number, type=ftype, label=label)
  if type_name:
    f.type_name = type_name
  return f


def _build():
  pool = descriptor_pool.Default()
  try:   # already built in this process (module reloaded)
    return (pool.FindMessageTypeByName('tensorflow.serving.SSLConfig'),
            pool.FindMessageTypeByName('tensorflow.serving.BatchingParameters'))
  except KeyError:
    pass

  ssl = descriptor_pb2.FileDescriptorProto(
      name='tensorflow_serving/config/ssl_config.proto',
      package='tensorflow.serving', syntax='proto3')
  m = ssl.message_type.add(name='SSLConfig')
  _field(m, 'server_key', 1, _F.TYPE_STRING)
  _field(m, 'server_cert', 2, _F.TYPE_STRING)
  _field(m, 'custom_ca', 3, _F.TYPE_STRING)
  _field(m, 'client_verify', 4, _F.TYPE_BOOL)
  pool.Add(ssl)

  batching = descriptor_pb2.FileDescriptorProto(
      name='tensorflow_serving/servables/tensorflow/batching_parameters_only.proto',
      package='tensorflow.serving', syntax='proto3',
      dependency=['google/protobuf/wrappers.proto'])
  m = batching.message_type.add(name='BatchingParameters')
  i64, s = '.google.protobuf.Int64Value', '.google.protobuf.StringValue'
  _field(m, 'max_batch_size', 1, _F.TYPE_MESSAGE, type_name=i64)
  _field(m, 'batch_timeout_micros', 2, _F.TYPE_MESSAGE, type_name=i64)
  _field(m, 'max_enqueued_batches', 3, _F.TYPE_MESSAGE, type_name=i64)
  _field(m, 'num_batch_threads', 4, _F.TYPE_MESSAGE, type_name=i64)
  _field(m, 'thread_pool_name', 5, _F.TYPE_MESSAGE, type_name=s)
  _field(m, 'allowed_batch_sizes', 6, _F.TYPE_INT64, label=_F.LABEL_REPEATED)
  _field(m, 'pad_variable_length_inputs', 7, _F.TYPE_BOOL)
  pool.Add(batching)
  return (pool.FindMessageTypeByName('tensorflow.serving.SSLConfig'),
          pool.FindMessageTypeByName('tensorflow.serving.BatchingParameters'))


_SSL_DESCRIPTOR, _BATCHING_DESCRIPTOR = _build()
SSLConfig = message_factory.MessageFactory().GetPrototype(_SSL_DESCRIPTOR)
BatchingParameters = message_factory.MessageFactory().GetPrototype(_BATCHING_DESCRIPTOR)
ModelServerConfig = model_server_config_pb2.ModelServerConfig


def parse_text(path: str, message_cls):
  """Parses a text-format proto file into a new `message_cls` (ParseError on bad text)."""
  with open(path, encoding='utf-8') as f:
    return text_format.Parse(f.read(), message_cls())
