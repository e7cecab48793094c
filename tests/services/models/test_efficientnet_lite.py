"""EfficientNet-Lite0 on torchvision's class: the TF padding, against a forward written here from first principles.

The reference is plain ``F.pad`` + ``F.conv2d`` + ``F.batch_norm`` + ReLU6 over the stage table of the
EfficientNet-Lite paper/TF builder, reading the same weights by name. It shares no code with the module,
so a padding or wiring mistake in either shows up as a difference.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from visionpipe.services.models.efficientnet_lite import (
    EfficientNetLite,
    TFSamePad2d,
    fuse_batchnorm,
    map_efficientnet_pytorch_keys,
)
from visionpipe.services.models.registry import EFFICIENTNET_LITE0

# (expand, kernel, stride, in, out, repeats), from TF's efficientnet_lite_builder.py for Lite0.
STAGES = [
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
]


def tf_same(x: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """TensorFlow's SAME padding: total = max((ceil(n/s) - 1)*s + k - n, 0), the smaller half first."""

    def split(n: int) -> tuple[int, int]:
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        return total // 2, total - total // 2

    (top, bottom), (left, right) = split(x.shape[-2]), split(x.shape[-1])
    return F.pad(x, (left, right, top, bottom))


def conv_bn(
    x: torch.Tensor,
    sd: dict,
    conv: str,
    bn: str,
    stride: int = 1,
    groups: int = 1,
    act: bool = True,
    symmetric: bool = False,
) -> torch.Tensor:
    w = sd[f"{conv}.weight"]
    k = w.shape[-1]
    x = tf_same(x, k, stride) if stride > 1 and not symmetric else F.pad(x, (k // 2,) * 4)
    x = F.conv2d(x, w, stride=stride, groups=groups)
    mean, var, gamma, beta = (sd[f"{bn}.{f}"] for f in ("running_mean", "running_var", "weight", "bias"))
    x = F.batch_norm(x, mean, var, gamma, beta, training=False, eps=1e-3)
    return x.clamp(0, 6) if act else x


def reference_forward(sd: dict, x: torch.Tensor, symmetric: bool = False) -> torch.Tensor:
    x = conv_bn(x, sd, "features.0.conv.0", "features.0.conv.1", stride=2, symmetric=symmetric)
    for s, (expand, k, stride, cin, cout, repeats) in enumerate(STAGES, start=1):
        for j in range(repeats):
            inp, step, c_in = x, stride if j == 0 else 1, cin if j == 0 else cout
            p = f"features.{s}.{j}.block."
            h = conv_bn(x, sd, p + "expand.0", p + "expand.1") if expand != 1 else x
            dw = p + ("depthwise.conv." if step > 1 else "depthwise.")
            assert sd[dw + "0.weight"].shape[-1] == k
            h = conv_bn(h, sd, dw + "0", dw + "1", stride=step, groups=c_in * expand, symmetric=symmetric)
            h = conv_bn(h, sd, p + "project.0", p + "project.1", act=False)
            x = h + inp if step == 1 and c_in == cout else h
    x = conv_bn(x, sd, "features.8.0", "features.8.1")
    return F.linear(x.mean((2, 3)), sd["classifier.1.weight"], sd["classifier.1.bias"])


@pytest.fixture(scope="module")
def model() -> EfficientNetLite:
    """Random weights whose BatchNorm statistics come from one batch, with random affine parameters.

    Freshly initialised, the activations die out and every input gives the same logits, which would
    hide any wiring mistake; statistics taken from data keep each layer's output alive.
    """
    torch.manual_seed(0)
    m = EfficientNetLite()
    bns = [mod for mod in m.modules() if isinstance(mod, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.momentum = 1.0  # running statistics := this batch's
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.1)
        m.train()(torch.randn(8, 3, 64, 64))
    return m.eval()


@pytest.mark.parametrize("side", [64, 67])  # even and odd: SAME pads (0, 1) / (1, 1) for k=3, (1, 2) / (2, 2) for k=5
def test_padded_lite0_equals_the_reference_forward(model: EfficientNetLite, side: int) -> None:
    x = torch.randn(2, 3, side, side, generator=torch.Generator().manual_seed(side))
    sd = model.state_dict()
    with torch.inference_mode():
        ours, ref = model(x), reference_forward(sd, x)
        symmetric = reference_forward(sd, x, symmetric=True)
    assert (ref[0] - ref[1]).abs().max().item() > 1e-2, "degenerate weights: every input gives the same logits"
    assert (ours - ref).abs().max().item() < 1e-4
    # The check has teeth: PyTorch's symmetric padding shifts every strided layer's grid by a pixel.
    assert (symmetric - ref).abs().max().item() > 1e-2


def test_same_pad_amounts() -> None:
    assert TFSamePad2d(3, 2)(torch.zeros(1, 1, 224, 224)).shape[-2:] == (225, 225)  # (0, 1)
    assert TFSamePad2d(5, 2)(torch.zeros(1, 1, 28, 28)).shape[-2:] == (31, 31)  # (1, 2)
    assert TFSamePad2d(3, 2)(torch.zeros(1, 1, 7, 7)).shape[-2:] == (9, 9)  # odd: (1, 1)


def test_fused_batchnorm_matches(model: EfficientNetLite) -> None:
    import copy

    fused = fuse_batchnorm(copy.deepcopy(model))
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        assert (fused(x) - model(x)).abs().max().item() < 1e-4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())


def _efficientnet_pytorch_name(key: str) -> str:
    """Our key as efficientnet_pytorch (lukemelas / ML Illustrated) names it: blocks numbered across stages."""
    starts = [sum(r for *_, r in STAGES[:i]) for i in range(len(STAGES))]
    m = re.fullmatch(r"features\.(\d)\.(\d+)\.block\.(expand|depthwise|project)\.(?:conv\.)?([01])\.(\w+)", key)
    if m:
        stage, j, part, which, field = m.groups()
        n = starts[int(stage) - 1] + int(j)
        names = {
            ("expand", "0"): "_expand_conv",
            ("expand", "1"): "_bn0",
            ("depthwise", "0"): "_depthwise_conv",
            ("depthwise", "1"): "_bn1",
            ("project", "0"): "_project_conv",
            ("project", "1"): "_bn2",
        }
        mod = names[(part, which)]
        return f"_blocks.{n}.{mod}.{field}"
    top = {
        "features.0.conv.0": "_conv_stem",
        "features.0.conv.1": "_bn0",
        "features.8.0": "_conv_head",
        "features.8.1": "_bn1",
        "classifier.1": "_fc",
    }
    prefix, field = key.rsplit(".", 1)
    return f"{top[prefix]}.{field}"


def test_efficientnet_pytorch_names_map_onto_every_key_strictly(model: EfficientNetLite) -> None:
    ours = model.state_dict()
    theirs = {_efficientnet_pytorch_name(k): v for k, v in ours.items()}
    assert len(theirs) == len(ours) == 296
    mapped = map_efficientnet_pytorch_keys(theirs)
    assert mapped.keys() == ours.keys()
    EfficientNetLite().load_state_dict(mapped, strict=True)
    with pytest.raises(KeyError, match="unexpected key"):
        map_efficientnet_pytorch_keys({**theirs, "_blocks.0._se_reduce.weight": torch.zeros(1)})  # B0's SE: not Lite


def test_the_bundled_file_loads_strictly(bundled_models: Path) -> None:
    from safetensors.torch import load_file

    EfficientNetLite().load_state_dict(load_file(str(EFFICIENTNET_LITE0.path(bundled_models))), strict=True)
