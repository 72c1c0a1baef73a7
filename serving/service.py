"""The one request layer: TF Serving's requests in, responses (or RequestError) out.

gRPC (serving/server.py) hands its request protos straight to these methods;
REST (serving/rest.py) decodes JSON into the same protos (serving/json_codec.py)
and calls the same methods. So a limit, a status code or a signature rule is
written once, here or in what this calls (predict.py, limits.py, models.py),
and both APIs answer alike.

Predict passes admission (limits.Admission: N computing, Q waiting, the rest
refused at once); status and metadata do not, so they answer while every
predict slot is busy. Config reload is off unless the operator enabled it, and
then accepts only base paths under the roots the operator allowed.
"""

import logging
import os
from typing import Dict, Optional, Sequence, Tuple

import grpc
import numpy as np
from tensorflow_serving.apis import (get_model_metadata_pb2, get_model_status_pb2,
                                     model_management_pb2, predict_pb2)

from serving import predict
from serving.limits import Admission, Call, Limits, Ticket
from serving.models import ModelManager, RequestError, Servable

log = logging.getLogger('serving')


def _missing_spec() -> RequestError:
  return RequestError(grpc.StatusCode.INVALID_ARGUMENT, 'Missing ModelSpec')


def internal_error(call: Call) -> RequestError:
  """What a client sees of a bug: a short text and the id to find it in the log."""
  return RequestError(grpc.StatusCode.INTERNAL,
                      f'Internal error (request id {call.request_id}); the server log has the detail')


class Service:
  """Predict, GetModelMetadata, GetModelStatus, HandleReloadConfigRequest."""

  def __init__(self, manager: ModelManager, limits: Optional[Limits] = None, *,
               reload_roots: Optional[Sequence[str]] = None):
    self.manager = manager
    self.limits = limits or Limits()
    self.admission = Admission(self.limits)
    # None: reload disabled; otherwise the real paths base paths must lie under.
    self.reload_roots = (None if reload_roots is None else
                         [os.path.realpath(r) for r in reload_roots])

  # ------------------------------------------------------------------ predict
  def predict(self, request: predict_pb2.PredictRequest, call: Call,
              ticket: Optional[Ticket] = None,
              servable: Optional[Servable] = None) -> Tuple[Servable, str, Dict[str, np.ndarray]]:
    """(servable used, signature name, {alias: array}); RequestError otherwise."""
    with ticket or self.admission.admit() as ticket:
      if not request.HasField('model_spec'):
        raise _missing_spec()
      servable = servable or self.manager.servable(request.model_spec)
      inputs = {alias: predict.tensor_proto_to_input(alias, proto, self.limits)
                for alias, proto in request.inputs.items()}
      call.check()
      name, outputs = predict.run(servable, request.model_spec.signature_name, inputs,
                                  request.output_filter, limits=self.limits, call=call,
                                  before_compute=lambda: ticket.compute(call))
      return servable, name, outputs

  def predict_response(self, request: predict_pb2.PredictRequest,
                       call: Call) -> predict_pb2.PredictResponse:
    servable, name, outputs = self.predict(request, call)
    response = predict_pb2.PredictResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    response.model_spec.signature_name = name
    for alias, array in outputs.items():
      response.outputs[alias].CopyFrom(predict.array_to_tensor_proto(array))
    return response

  # ------------------------------------------------------------------ metadata, status
  def get_model_metadata(self, request: get_model_metadata_pb2.GetModelMetadataRequest
                         ) -> get_model_metadata_pb2.GetModelMetadataResponse:
    if not request.HasField('model_spec'):
      raise _missing_spec()
    if not request.metadata_field:
      raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                         'GetModelMetadataRequest must specify at least one metadata_field')
    for field in request.metadata_field:
      if field != 'signature_def':
        raise RequestError(grpc.StatusCode.INVALID_ARGUMENT,
                           f'Metadata field {field} is not supported')
    servable = self.manager.servable(request.model_spec)
    response = get_model_metadata_pb2.GetModelMetadataResponse()
    response.model_spec.name = servable.name
    response.model_spec.version.value = servable.version
    signatures = get_model_metadata_pb2.SignatureDefMap()
    for key, value in servable.signature_defs.items():
      signatures.signature_def[key].CopyFrom(value)
    response.metadata['signature_def'].Pack(signatures)
    return response

  def get_model_status(self, request: get_model_status_pb2.GetModelStatusRequest
                       ) -> get_model_status_pb2.GetModelStatusResponse:
    if not request.HasField('model_spec'):
      raise _missing_spec()
    return get_model_status_pb2.GetModelStatusResponse(
        model_version_status=self.manager.status(request.model_spec))

  # ------------------------------------------------------------------ reload
  def _check_reload_allowed(self, config) -> None:
    if self.reload_roots is None:
      raise RequestError(grpc.StatusCode.PERMISSION_DENIED,
                         'HandleReloadConfigRequest is disabled on this server '
                         '(the operator can enable it with --enable_reload_config)')
    for model in config.model_config_list.config:
      real = os.path.realpath(model.base_path) if model.base_path else ''
      if not real or not any(real == root or real.startswith(root.rstrip(os.sep) + os.sep)
                             for root in self.reload_roots):
        raise RequestError(grpc.StatusCode.PERMISSION_DENIED,
                           f'base_path of model {model.name} is outside the roots this server '
                           'allows (--reload_config_allowed_roots)')

  def reload_config(self, request: model_management_pb2.ReloadConfigRequest
                    ) -> model_management_pb2.ReloadConfigResponse:
    """Replaces the model list, then loads/unloads before answering (as TF Serving)."""
    self.manager.validate_config(request.config)
    self._check_reload_allowed(request.config)
    self.manager.set_config(request.config)
    self.manager.poll()
    return model_management_pb2.ReloadConfigResponse()
