"""`oesir distill` smoke test on tiny generated photos: trains, exports, matches torch, resumes exactly."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from oesir_cli.cli import app
from oesir_cli.detector import Detector
from oesir_cli.distill.command import single_pass_parity, torch_maps
from oesir_cli.distill.data import build_cache
from oesir_cli.distill.export import build_single_pass, export_student
from oesir_cli.distill.model import Student
from oesir_cli.distill.train import TrainConfig, train
from oesir_cli.registry import MODEL_SPECS, Model, WeightsError, add_manifest_entry, load_model
from oesir_cli.single_pass import SinglePass
from oesir_cli.teacher import Teacher

from .conftest import EXAMPLES, synthetic_photo

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    photos = root / "photos"
    photos.mkdir()
    for i in range(6):
        cv2.imwrite(str(photos / f"t{i}.jpg"), synthetic_photo(300 + i, (200, 160)))
    cache = build_cache(photos, root / "cache", crops_per_image=2, seed=0, detector=Detector(), teacher=Teacher())
    return root, photos, cache


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def test_cli_distill_exports_single_pass_graph_matching_torch(tiny, tmp_path):
    root, photos, _ = tiny
    out = tmp_path / "weights"
    args = ["distill", "--images", str(photos), "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    r = runner.invoke(app, [*args, "--iterations", "3", "--batch", "4", "--crops", "2"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {
        "student_s3.onnx",
        "single_pass_s3.onnx",
        "ssd_mobilenet_v2_coco.onnx",  # the single pass reads its tensors: onnxruntime wants it in the same folder
        "whitening_student_s3_320.npz",
    }
    assert "oesir distill" in manifest["files"]["single_pass_s3.onnx"]["command"]
    # neither the detector's nor the student's weights are copied into the graph
    assert (out / "single_pass_s3.onnx").stat().st_size < 1_000_000

    state = torch.load(tmp_path / "c" / "student_s3.pt", weights_only=False)
    student = Student("s3")
    student.load_state_dict(state["model"])
    student.eval()
    detector = Detector()
    net = SinglePass(directory=out)
    # the one-call graph on photos it was not checked on at export: detector boxes, torch maps, numpy descriptors
    views = [cv2.cvtColor(synthetic_photo(999 + i, size), cv2.COLOR_BGR2RGB) for i, size in enumerate([(256, 192), (180, 320)])]
    views += [np.ascontiguousarray(cv2.imread(str(EXAMPLES.parent / "spliced.jpg"))[:, :, ::-1])]
    assert single_pass_parity(torch_maps(student), net, views, detector) < 1e-4
    o = net.objects(views[-1], 0.05, 8)
    assert len(o.boxes) > 1 and o.descriptors.shape == (len(o.boxes), 1392)  # it finds objects and describes each
    assert len(net.objects(views[-1], 0.05, 0).boxes) == 1  # max_objects 0: the whole photo only
    # a tampered detector file next to it is refused (the graph reads its tensors)
    load_model.cache_clear()
    with open(out / "ssd_mobilenet_v2_coco.onnx", "r+b") as fh:
        fh.seek(-100, 2)
        fh.write(b"x")
    with pytest.raises(WeightsError, match="altered"):
        SinglePass(directory=out)
    load_model.cache_clear()


def test_single_pass_parity_check_catches_a_wrong_graph(tiny, tmp_path):
    """The parity check can fail: a student other than the one exported is caught."""
    out = tmp_path / "w"
    out.mkdir()
    student = Student("s3").eval()
    export_student(student, out / "student_s3.onnx")
    from oesir_cli.distill.command import _detector_next_to

    single = build_single_pass(_detector_next_to(out), out / "student_s3.onnx", out / "single_pass_s3.onnx")
    net = SinglePass(model=Model(MODEL_SPECS["single-pass-s3"], {"sha256": "x"}, ort.InferenceSession(str(single))))
    rgb = np.ascontiguousarray(cv2.imread(str(EXAMPLES.parent / "spliced.jpg"))[:, :, ::-1])
    assert single_pass_parity(torch_maps(student), net, [rgb], Detector()) < 1e-4
    other = Student("s3").eval()
    torch.manual_seed(1)
    for p in other.parameters():
        p.data.normal_(0, 0.1)
    assert single_pass_parity(torch_maps(other), net, [rgb], Detector()) > 1e-2


def test_resume_continues_exactly(tiny, tmp_path):
    _, _, cache = tiny
    config = TrainConfig(iterations=8, batch=4, save_every=1, seed=3)
    full, losses_full = train(cache, config, tmp_path / "a.pt")

    class Stop(Exception):
        pass

    def stop_at_5(step: int, n: int, loss: float) -> None:
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        train(cache, config, tmp_path / "b.pt", progress=stop_at_5)
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] == 4  # step 5 was not checkpointed
    resumed, losses_rest = train(cache, config, tmp_path / "b.pt", resume=True)
    assert len(losses_rest) == 4
    assert losses_rest == pytest.approx(losses_full[4:], rel=1e-5)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="other settings"):
        train(cache, TrainConfig(iterations=9, batch=4, save_every=1, seed=3), tmp_path / "b.pt", resume=True)


def test_training_lowers_the_loss(tiny, tmp_path):
    _, _, cache = tiny
    _, losses = train(cache, TrainConfig(iterations=30, batch=4, lr=2e-3), tmp_path / "c.pt")
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


@pytest.mark.parametrize("variant", ["s1", "s2", "s3"])
def test_variants_read_what_the_paper_says(variant):
    s = Student(variant)
    assert s.inputs() == {"s1": ("image",), "s2": ("F2",), "s3": ("F2", "F3", "F4")}[variant]
    assert hasattr(s, "from_f3") == (variant == "s3")


def test_manifest_entry_is_atomic_and_hashed(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    entry = add_manifest_entry(f, {"model": "x"})
    assert entry["sha256"].startswith("ba7816bf") and entry["bytes"] == 3
    assert not list(tmp_path.glob(".*.tmp"))
