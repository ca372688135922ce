"""The student branch (the paper's Sec. 3.3): imitate the teacher's maps from the detector's backbone.

S3 (default): F2 in, three inverted-residual bottlenecks; F3 is added after the
first and F4 after the second (1x1 projections). S2: F2 only. S1: five
bottlenecks on the image itself (halved to 150x150 to keep its training cost
near the others' on a CPU), no detector features. Every variant ends in
two 1x1 heads that give the teacher's stride-32 map (1280 channels) and its
stride-16 map (112 channels) for a 320x320 input; the stride-16 head reads
the first block's output, which sits at that resolution.

Inputs are the detector's NHWC tensors (and its 0..255 image for S1), so the
exported graph plugs straight onto the detector's outputs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import DETECTOR_SPEC, STUDENT_INPUTS, STUDENT_MAPS, STUDENT_VARIANTS

VARIANTS = STUDENT_VARIANTS
F2_CH, F3_CH, F4_CH = (DETECTOR_SPEC.map_spec(name).shape[-1] for name in ("F2", "F3", "F4"))  # NHWC
# the teacher's maps of the student's view: (channels, side) of stride 16, then of stride 32
(S16_CH, S16_SIZE, _), (S32_CH, S32_SIZE, _) = (m.shape for m in STUDENT_MAPS)


class Bottleneck(nn.Module):
    """MobileNetV2 inverted residual: 1x1 expand, 3x3 depthwise (stride), 1x1 project."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int = 4):
        super().__init__()
        mid = cin * expand
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU6(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    return x if x.shape[-1] == size else F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class Student(nn.Module):
    """One of S1/S2/S3; forward returns (s16 map, s32 map), NCHW."""

    def __init__(self, variant: str = "s3", width: int = 160):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown student {variant!r} (s1, s2, s3)")
        self.variant = variant
        w1, w2 = width, 2 * width
        if variant == "s1":
            self.stem = nn.Sequential(
                nn.Conv2d(3, 32, 3, 2, 1, bias=False),
                nn.BatchNorm2d(32),
                nn.ReLU6(inplace=True),  # 150
                Bottleneck(32, 48, 2),  # 75
                Bottleneck(48, 96, 2),  # 38
            )
        else:
            self.stem = nn.Sequential(nn.Conv2d(F2_CH, 96, 1, bias=False), nn.BatchNorm2d(96), nn.ReLU6(inplace=True))
        self.block1 = Bottleneck(96, w1, 2)  # 19
        self.block2 = Bottleneck(w1, w2, 2)  # 10
        self.block3 = Bottleneck(w2, w2, 1)
        if variant == "s3":
            self.from_f3 = nn.Conv2d(F3_CH, w1, 1)
            self.from_f4 = nn.Conv2d(F4_CH, w2, 1)
        self.head16 = nn.Conv2d(w1, S16_CH, 1)
        self.head32 = nn.Conv2d(w2, S32_CH, 1)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Tensors in the order of `inputs()` (detector NHWC maps, or its 0..255 image for S1)."""
        if self.variant == "s1":
            x = self.stem((inputs[0].permute(0, 3, 1, 2) - 127.5) / 127.5)
        else:
            x = self.stem(inputs[0].permute(0, 3, 1, 2))
        x = self.block1(x)
        if self.variant == "s3":
            x = x + _resize(self.from_f3(inputs[1].permute(0, 3, 1, 2)), x.shape[-1])
        s16 = _resize(self.head16(x), S16_SIZE)
        x = self.block2(x)
        if self.variant == "s3":
            x = x + _resize(self.from_f4(inputs[2].permute(0, 3, 1, 2)), x.shape[-1])
        x = self.block3(x)
        return s16, _resize(self.head32(x), S32_SIZE)

    def inputs(self) -> tuple[str, ...]:
        """Names of the detector tensors this variant reads."""
        return STUDENT_INPUTS[self.variant]
