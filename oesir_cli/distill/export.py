"""The student to ONNX, and the single-pass graph: detector + student + boxes + descriptors in one call.

The student is exported at the detector's opset (13) with the detector's tensor
names as inputs, then joined to the detector graph with `onnx.compose`, so the
detector's F2/F3/F4 feed the student inside one graph; `objects_graph` appends box
decoding, NMS and the max-ROIAlign descriptors. The detector's weights are not copied
into it, nor the student's: they are ONNX external data pointing at the byte ranges of
the detector's and the student's files' own tensors, so weights/ holds them once
(onnxruntime reads them from those files, which must sit in the same folder).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ..registry import DEFAULT_STUDENT, DETECTOR_SPEC, SINGLE_PASS_SPECS, STUDENT_MAPS
from ..store import atomic_write
from .model import Student

OPSET = 13


def example_inputs(model: Student) -> dict[str, torch.Tensor]:
    """Inputs of the right shapes for tracing (the detector's tensors, NHWC): its image 0..255, maps 0..6 (ReLU6)."""
    g = torch.Generator().manual_seed(0)
    side = DETECTOR_SPEC.photo_input().side
    all_inputs = {"image": torch.rand(1, side, side, 3, generator=g) * 255}
    for m in DETECTOR_SPEC.maps:
        all_inputs[m.name] = torch.rand(1, *m.shape, generator=g) * 6
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
            output_names=[m.name for m in STUDENT_MAPS],
            opset_version=OPSET,
            do_constant_folding=True,
            dynamo=False,
        )

    atomic_write(out, write)
    return out


def merge_with_detector(detector_onnx: Path, student_onnx: Path, out: Path | None = None):
    """Join detector and student (S2/S3) into one graph: image in; heads and student maps out.

    Written to `out` when given; returns the ModelProto.
    """
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
    if out is not None:
        atomic_write(out, lambda tmp: onnx.save(merged, str(tmp)))
    return merged


def build_single_pass(detector_onnx: Path, student_onnx: Path, out: Path) -> Path:
    """Write the single-pass graph: inputs `image` [1,300,300,3], `max_objects` int64 [1], `min_score` [1];
    outputs boxes [K+1, 4] (normalised, whole photo first), scores, classes, descriptors [K+1, 1392]
    (unwhitened) and the student's maps. `out` must be in the detector's and the student's folder."""
    import onnx
    from onnx import TensorProto, helper

    from .objects_graph import MAPS, Nodes, objects_nodes

    spec = SINGLE_PASS_SPECS[DEFAULT_STUDENT]  # every variant's graph has these inputs and outputs
    _, max_objects, min_score = spec.inputs
    boxes, scores, classes, descriptors = spec.outputs
    detector_onnx = Path(detector_onnx)
    for source in (detector_onnx, Path(student_onnx)):
        if Path(out).resolve().parent != source.resolve().parent:
            raise ValueError(f"{out} must be next to {source}: it reads its tensors from that file")
    model = merge_with_detector(detector_onnx, student_onnx)
    graph = model.graph
    nodes = Nodes("objects/")
    made = objects_nodes(nodes, max_objects, min_score)
    graph.node.extend(nodes.nodes)
    graph.node.extend(helper.make_node("Identity", [made[k]], [k], name=f"objects/out_{k}") for k in made)
    graph.initializer.extend(nodes.inits)
    graph.input.extend(
        [
            helper.make_tensor_value_info(max_objects, TensorProto.INT64, [1]),
            helper.make_tensor_value_info(min_score, TensorProto.FLOAT, [1]),
        ]
    )
    maps = {o.name: o for o in graph.output if o.name in spec.map_names()}
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info(boxes, TensorProto.FLOAT, ["objects", 4]),
            helper.make_tensor_value_info(scores, TensorProto.FLOAT, ["objects"]),
            helper.make_tensor_value_info(classes, TensorProto.INT64, ["objects"]),
            helper.make_tensor_value_info(descriptors, TensorProto.FLOAT, ["objects", sum(c for _, _, c in MAPS)]),
            *(maps[name] for name in spec.map_names()),
        ]
    )
    onnx.checker.check_model(model)
    _share_tensors(model, detector_onnx, lambda name: not name.startswith(("student/", "objects/")))
    _share_tensors(model, Path(student_onnx), lambda name: name.startswith("student/"))
    atomic_write(out, lambda tmp: onnx.save(model, str(tmp)))
    return out


def _share_tensors(model, source: Path, which: Callable[[str], bool], min_bytes: int = 1024) -> int:
    """Point every tensor of `model` chosen by `which` whose bytes appear in the file `source` at them
    (ONNX external data)."""
    from onnx import TensorProto

    data = Path(source).read_bytes()
    shared = 0
    for tensor in model.graph.initializer:
        raw = tensor.raw_data
        if len(raw) < min_bytes or not which(tensor.name):
            continue
        offset = data.find(raw)
        if offset < 0:
            continue
        tensor.ClearField("raw_data")
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in (("location", Path(source).name), ("offset", str(offset)), ("length", str(len(raw)))):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        shared += 1
    return shared
