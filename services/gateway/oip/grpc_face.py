"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` on its own port, beside the HTTP one.

The same model as the HTTP face (``model``): the same checks, admission, backpressure, deadline and result path,
only the envelope differs. A request's deadline is its ``deadline_ms`` parameter, else the ``x-deadline-ms``
metadata, else the call's own gRPC deadline (what a client's timeout sets); its idempotency key the
``request_id`` parameter or the ``x-request-id`` metadata. Images come as ``raw_input_contents`` (Triton's
clients) or ``bytes_contents``; outputs go back as ``raw_output_contents``. A refusal is a gRPC status with the
native API's code in its details and in the trailing metadata (``visionpipe-error``, ``http-status``, and
``retry-after`` on a 429 or 503: UNAVAILABLE, which clients retry).
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from visionpipe.services.gateway.errors import GatewayError
from visionpipe.services.gateway.oip import model
from visionpipe.services.gateway.oip.codegen import Protocol, protocol
from visionpipe.services.gateway.service import Gateway

SC = grpc.StatusCode
STATUS = {
    400: SC.INVALID_ARGUMENT,
    401: SC.UNAUTHENTICATED,
    404: SC.NOT_FOUND,
    408: SC.DEADLINE_EXCEEDED,
    409: SC.ALREADY_EXISTS,
    413: SC.RESOURCE_EXHAUSTED,
    415: SC.INVALID_ARGUMENT,
    422: SC.INVALID_ARGUMENT,
    429: SC.UNAVAILABLE,
    500: SC.INTERNAL,
    501: SC.UNIMPLEMENTED,
    502: SC.INTERNAL,
    503: SC.UNAVAILABLE,
    504: SC.DEADLINE_EXCEEDED,
}
# The calls that reach the model need a token when tokens are on; liveness, readiness and server metadata do not.
GUARDED = frozenset({"ModelMetadata", "ModelReady", "ModelInfer"})
Method = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class Servicer:
    """The service's calls, each a coroutine of (request message, context) to response message."""

    def __init__(self, gw: Gateway, proto: Protocol) -> None:
        self.gw, self.p = gw, proto
        self.tokens = [t.encode() for t in gw.tokens]

    async def ServerLive(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.p.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.p.ServerReadyResponse(ready=all((await self.gw.ready_checks()).values()))

    async def ServerMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return self.p.ServerMetadataResponse(**model.server_metadata())

    async def ModelMetadata(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model.check_model(request.name, request.version)
        doc = model.metadata()
        tensor = self.p.ModelMetadataResponse.TensorMetadata
        doc["inputs"] = [tensor(**t) for t in doc["inputs"]]
        doc["outputs"] = [tensor(**t) for t in doc["outputs"]]
        return self.p.ModelMetadataResponse(**doc)

    async def ModelReady(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        model.check_model(request.name, request.version)
        return self.p.ModelReadyResponse(ready=self.gw.ready and self.gw.stages_ready)

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        received = time.time_ns()
        model.check_model(request.model_name, request.model_version)
        wanted = [o.name for o in request.outputs] or list(model.OUTPUTS)
        model.check_outputs(wanted)
        call = _call(request, context, received)
        response = self.p.ModelInferResponse(model_name=model.MODEL, model_version=model.VERSION, id=request.id)
        with self.gw.uploads.hold() as hold:
            hold.grow_to(request.ByteSize())
            del request  # the images are the call's now, and leave it once admitted
            subs = await model.admit(self.gw, call)
        arrays = model.tensors(await model.collect(self.gw, call, subs))
        response.parameters["request_id"].string_param = ",".join(s.request_id for s in subs)
        for name in wanted:
            datatype, array = model.OUTPUTS[name][0], arrays[name]
            response.outputs.add(name=name, datatype=datatype, shape=list(array.shape))
            response.raw_output_contents.append(model.raw(array, datatype))
        return response

    def authorized(self, context: grpc.aio.ServicerContext) -> bool:
        if not self.tokens:
            return True
        given = _metadata(context).get("authorization", "")
        token = given[7:].encode() if given.startswith("Bearer ") else b""
        return any([hmac.compare_digest(token, t) for t in self.tokens])


def _call(request: Any, context: grpc.aio.ServicerContext, received: int) -> model.InferCall:
    """The images of the request's one input, its parameters, then its metadata, then its gRPC deadline."""
    if len(request.inputs) != 1:
        raise model.invalid("the request must have exactly one input, 'images'")
    tensor = request.inputs[0]
    if request.raw_input_contents:
        if len(request.raw_input_contents) != 1:
            raise model.invalid("raw_input_contents must hold one entry per input: one")
        images = model.split_bytes(request.raw_input_contents[0])
    else:
        images = list(tensor.contents.bytes_contents)
    model.check_input(tensor.name, tensor.datatype, list(tensor.shape), len(images))
    call = model.InferCall(images, received)
    model.read_parameters({k: _value(v) for k, v in request.parameters.items()}, call)
    meta = _metadata(context)
    if "x-deadline-ms" in meta:
        if not meta["x-deadline-ms"].isdigit():
            raise model.invalid("x-deadline-ms must be a whole number of ms")
        model.read_parameters({"deadline_ms": int(meta["x-deadline-ms"])}, call)
    call.request_id = call.request_id or meta.get("x-request-id")
    model.check_request_id(call.request_id)
    left = context.time_remaining()
    if call.deadline_ms is None and left is not None:
        call.deadline_ms = max(1.0, left * 1000)
    return call


def _value(parameter: Any) -> Any:
    which = parameter.WhichOneof("parameter_choice")
    return getattr(parameter, which) if which else None


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}


def _guarded(servicer: Servicer, name: str) -> Method:
    """The call with its refusals as gRPC statuses (and a token checked where one is needed)."""
    method: Method | None = getattr(servicer, name, None)

    async def handle(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            if method is None:
                raise GatewayError(501, "unimplemented", f"{name} is not served by visionpipe")
            if name in GUARDED and not servicer.authorized(context):
                raise GatewayError(401, "unauthorized", "a valid bearer token is required")
            return await method(request, context)
        except GatewayError as exc:
            await _abort(context, exc)

    return handle


async def _abort(context: grpc.aio.ServicerContext, exc: GatewayError) -> None:
    trailer = [("visionpipe-error", exc.code), ("http-status", str(exc.status))]
    if exc.retry_after_s is not None:
        trailer.append(("retry-after", str(exc.retry_after_s)))
    if exc.request_id is not None:
        trailer.append(("x-request-id", exc.request_id))
    trailer += [(k.replace("_", "-"), str(v)) for k, v in exc.extra.items()]
    context.set_trailing_metadata(tuple(trailer))
    await context.abort(STATUS.get(exc.status, SC.UNKNOWN), f"{exc.code}: {exc.detail}")


def handler(gw: Gateway) -> grpc.GenericRpcHandler:
    """Every method of the service as the descriptor lists it, to the servicer's coroutine of that name."""
    proto = protocol()
    servicer = Servicer(gw, proto)
    methods = {
        m.name: grpc.unary_unary_rpc_method_handler(
            _guarded(servicer, m.name),
            request_deserializer=proto.messages[m.input_type.name].FromString,
            response_serializer=proto.messages[m.output_type.name].SerializeToString,
        )
        for m in proto.service.methods
    }
    return grpc.method_handlers_generic_handler(proto.service.full_name, methods)


async def start_grpc(gw: Gateway, host: str, port: int, max_message_bytes: int) -> tuple[grpc.aio.Server, int]:
    """The service on ``host:port`` (0: a free port), started; with the port it bound."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 0),  # a second server on a port in use fails, rather than sharing it unseen
        ]
    )
    server.add_generic_rpc_handlers((handler(gw),))
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    bound = server.add_insecure_port(address)
    await server.start()
    return server, bound
