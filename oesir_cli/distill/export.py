"""The student to ONNX, and the single-pass graph: detector + student in one onnxruntime call.

The student is exported at the detector's opset (13) with the detector's tensor
names as inputs, then joined to the detector graph with `onnx.compose`, so the
detector's F2/F3/F4 feed the student inside one graph whose outputs are the six
box/class heads and the student's two maps (`student_s16`, `student_s32`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..store import atomic_write
from .model import F2_CH, F3_CH, F4_CH, Student

OPSET = 13
OUTPUTS = ("student_s16", "student_s32")


def example_inputs(model: Student) -> dict[str, torch.Tensor]:
    """Inputs of the right shapes for tracing (the detector's tensors, NHWC)."""
    g = torch.Generator().manual_seed(0)
    all_inputs = {
        "image": torch.rand(1, 300, 300, 3, generator=g) * 255,
        "F2": torch.rand(1, 38, 38, F2_CH, generator=g) * 6,
        "F3": torch.rand(1, 19, 19, F3_CH, generator=g) * 6,
        "F4": torch.rand(1, 10, 10, F4_CH, generator=g) * 6,
    }
    return {k: all_inputs[k] for k in model.inputs()}


def export_student(model: Student, out: Path) -> Path:
    """Write the student alone as ONNX (inputs named like the detector's outputs)."""
    model = model.eval()
    example = example_inputs(model)

    def write(tmp: Path) -> None:
        torch.onnx.export(
            model,
            tuple(example.values()),
            str(tmp),
            input_names=list(example),
            output_names=list(OUTPUTS),
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )

    atomic_write(out, write)
    return out


def merge_with_detector(detector_onnx: Path, student_onnx: Path, out: Path) -> Path:
    """Join detector and student (S2/S3) into one graph: image in; heads and student maps out."""
    import onnx
    from onnx import compose

    det = onnx.load(str(detector_onnx))
    stu = onnx.load(str(student_onnx))
    stu_inputs = [i.name for i in stu.graph.input]
    if "image" in stu_inputs:
        raise ValueError("S1 reads the image, not the detector: it has no single-pass graph")
    stu.ir_version = det.ir_version
    del stu.opset_import[:]
    stu.opset_import.extend(det.opset_import)
    merged = compose.merge_models(det, stu, io_map=[(n, n) for n in stu_inputs], prefix2="student/")
    # the prefix renamed the student's outputs; give them back their plain names
    for o in merged.graph.output:
        if o.name.startswith("student/"):
            plain = o.name.removeprefix("student/")
            for node in merged.graph.node:
                node.output[:] = [plain if x == o.name else x for x in node.output]
            o.name = plain
    onnx.checker.check_model(merged)
    atomic_write(out, lambda tmp: onnx.save(merged, str(tmp)))
    return out
