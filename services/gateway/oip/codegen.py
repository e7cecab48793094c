"""The protocol's gRPC messages and service, made from the vendored ``grpc_predict_v2.proto`` when first imported.

grpcio-tools' protoc compiles the .proto into a descriptor set at import time, in memory (a temporary folder
for protoc's output, deleted at once): nothing generated is committed, ignored or shipped, so an editable
install, a wheel and the container image all build the same classes from the same file, and they cannot drift
from it. The classes live in a descriptor pool of their own, not protobuf's default one: Triton's client
(``tritonclient.grpc``) and KServe's register the same ``inference.*`` names there, and a process that imports
one of them and this (a test, a user's program embedding the gateway) would otherwise fail on duplicate symbols.
The service's methods are read from the same descriptor, so the server's method table is not hand-written either.
"""

from __future__ import annotations

import tempfile
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import ServiceDescriptor

PROTO = "grpc_predict_v2.proto"
SERVICE = "inference.GRPCInferenceService"


class ProtoError(RuntimeError):
    """protoc could not compile the vendored file (a broken install, or a grpcio-tools that cannot read it)."""


def compile_proto() -> descriptor_pb2.FileDescriptorProto:
    """The vendored .proto compiled by grpcio-tools' protoc, as its file descriptor."""
    from grpc_tools import protoc  # only here: the rest of the gateway does not need protoc loaded

    source = Path(str(files("visionpipe.services.gateway.oip") / PROTO))
    with tempfile.TemporaryDirectory(prefix="visionpipe-oip-") as tmp:
        out = Path(tmp) / "oip.pb"
        rc = protoc.main(["protoc", f"-I{source.parent}", f"--descriptor_set_out={out}", PROTO])
        if rc != 0 or not out.exists():
            raise ProtoError(f"protoc could not compile {source} (exit status {rc})")
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return fds.file[0]


class Protocol:
    """The message classes by short name (``ModelInferRequest``, ``ModelInferResponse``, …) and the service."""

    def __init__(self, fdp: descriptor_pb2.FileDescriptorProto) -> None:
        self.pool = descriptor_pool.DescriptorPool()
        self.pool.Add(fdp)
        self.messages: dict[str, Any] = {
            name.rsplit(".", 1)[-1]: cls
            for name, cls in message_factory.GetMessageClassesForFiles([fdp.name], self.pool).items()
            if name.count(".") == 1  # top-level messages; nested ones are reached through their parents
        }
        self.service: ServiceDescriptor = self.pool.FindServiceByName(SERVICE)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.messages[name]
        except KeyError:
            raise AttributeError(name) from None


@cache
def protocol() -> Protocol:
    return Protocol(compile_proto())
