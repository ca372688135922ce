"""EfficientNet-Lite as a small torch module that exports to ONNX with dynamic H/W.

The lukemelas-style implementation pads convolutions for one fixed image size
("static same padding"), which bakes the size into an exported graph. Here the
architecture is read off the state dict and TF "same" padding is written as a
fixed pad, which is exact whenever height and width are multiples of 32 (every
stride-2 convolution then sees an even size). The preprocessing keeps inputs to
that rule.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

BN_EPS = 1e-3
# EfficientNet-Lite stage strides (lite0..lite4 share them).
STAGE_STRIDES = (1, 2, 2, 2, 1, 2, 1)


def _same_pad(kernel: int, stride: int) -> tuple[int, int, int, int]:
    """TF 'SAME' padding (left, right, top, bottom) for an even input size."""
    total = max(kernel - stride, 0)
    lo = total // 2
    return (lo, total - lo, lo, total - lo)


class ConvBN(nn.Module):
    """Conv (TF same padding) + batch norm + optional ReLU6."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True):
        super().__init__()
        self.pad = _same_pad(k, stride)
        self.conv = nn.Conv2d(cin, cout, k, stride, 0, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        x = self.bn(self.conv(x))
        return F.relu6(x) if self.act else x


class MBConv(nn.Module):
    """Inverted residual block without squeeze-excitation (the Lite variant)."""

    def __init__(self, cin: int, cexp: int, cout: int, k: int, stride: int):
        super().__init__()
        self.expand = ConvBN(cin, cexp, 1) if cexp != cin else None
        self.depthwise = ConvBN(cexp, cexp, k, stride, groups=cexp)
        self.project = ConvBN(cexp, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return y + x if self.residual else y


class EfficientNetLiteFeatures(nn.Module):
    """Returns (stride-16 map, last conv map) of EfficientNet-Lite, NCHW."""

    def __init__(self, blocks: list[tuple[int, int, int, int, int]], stem: int, head: int, stride16_block: int):
        super().__init__()
        self.stem = ConvBN(3, stem, 3, 2)
        self.blocks = nn.ModuleList(MBConv(*b) for b in blocks)
        self.head = ConvBN(blocks[-1][2], head, 1)
        self.stride16_block = stride16_block

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stem(x)
        s16 = x
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.stride16_block:
                s16 = x
        return s16, self.head(x)


def _bn_to(prefix: str, sd: dict, bn: nn.BatchNorm2d) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(bn, name).data.copy_(sd[f"{prefix}.{name}"])


def from_lukemelas_state_dict(sd: dict) -> EfficientNetLiteFeatures:
    """Build the module from a lukemelas-named EfficientNet-Lite state dict."""
    n_blocks = 1 + max(int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\.", k)))
    specs, stage, prev_out = [], -1, sd["_conv_stem.weight"].shape[0]
    for i in range(n_blocks):
        p = f"_blocks.{i}"
        dw = sd[f"{p}._depthwise_conv.weight"]
        cexp, k = dw.shape[0], dw.shape[-1]
        cout = sd[f"{p}._project_conv.weight"].shape[0]
        first_of_stage = cout != prev_out or i == 0
        if first_of_stage:
            stage += 1
        stride = STAGE_STRIDES[stage] if first_of_stage else 1
        specs.append((prev_out, cexp, cout, k, stride))
        prev_out = cout
    # The stride-16 map: the output of the last block before the final stride-2 stage.
    last_s16 = max(i for i, s in enumerate(specs) if s[4] == 2)
    model = EfficientNetLiteFeatures(specs, sd["_conv_stem.weight"].shape[0], sd["_conv_head.weight"].shape[0], last_s16 - 1)
    model.stem.conv.weight.data.copy_(sd["_conv_stem.weight"])
    _bn_to("_bn0", sd, model.stem.bn)
    for i, block in enumerate(model.blocks):
        p = f"_blocks.{i}"
        if block.expand is not None:
            block.expand.conv.weight.data.copy_(sd[f"{p}._expand_conv.weight"])
            _bn_to(f"{p}._bn0", sd, block.expand.bn)
        block.depthwise.conv.weight.data.copy_(sd[f"{p}._depthwise_conv.weight"])
        _bn_to(f"{p}._bn1", sd, block.depthwise.bn)
        block.project.conv.weight.data.copy_(sd[f"{p}._project_conv.weight"])
        _bn_to(f"{p}._bn2", sd, block.project.bn)
    model.head.conv.weight.data.copy_(sd["_conv_head.weight"])
    _bn_to("_bn1", sd, model.head.bn)
    return model.eval()


class EfficientNetLiteClassifier(nn.Module):
    """Features + global average pool + the ImageNet classifier (to test preprocessing)."""

    def __init__(self, features: EfficientNetLiteFeatures, fc_weight: torch.Tensor, fc_bias: torch.Tensor):
        super().__init__()
        self.features = features
        self.fc = nn.Linear(fc_weight.shape[1], fc_weight.shape[0])
        self.fc.weight.data.copy_(fc_weight)
        self.fc.bias.data.copy_(fc_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x)[1].mean((2, 3)))
