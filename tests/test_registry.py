"""The model registry: records drive preprocessing and file names, and stored settings keep their bytes."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from oesir_cli.detector import NMS_IOU, preprocess
from oesir_cli.distill import objects_graph
from oesir_cli.engine import MAX_OBJECTS, EngineConfig
from oesir_cli.registry import (
    DETECTOR_SPEC,
    MODEL_SPECS,
    VIEW_SIDE,
    WeightsError,
    learned_file,
    model_spec,
    read_manifest,
)
from oesir_cli.teacher import input_size
from oesir_cli.teacher import preprocess as teacher_preprocess

# what an index made before `detector` and `student` existed stores, byte for byte
OLD_STORED = '{"teacher": "efficientnet-lite0", "long_side": 512, "max_objects": 8, "min_score": 0.05, "local_keypoints": 1000, '


@pytest.mark.parametrize("model", ["teacher", "student"])
def test_stored_config_keeps_its_bytes(model):
    stored = OLD_STORED + f'"model": "{model}"}}'
    config = EngineConfig.stored(stored)
    assert json.dumps(config.as_dict()) == stored
    assert config.detector == "ssd-mobilenet-v2-coco" and config.student == "s3"  # the float detector it was made with
    assert EngineConfig.stored(None).teacher == "efficientnet-lite0"  # an index that stored no settings at all


def test_a_new_index_uses_the_int8_networks_and_says_so():
    config = EngineConfig()
    assert (config.teacher, config.detector) == ("efficientnet-lite0-int8", "ssd-mobilenet-v2-coco-int8")
    stored = config.as_dict()
    assert stored["detector"] == "ssd-mobilenet-v2-coco-int8" and "student" not in stored
    assert EngineConfig.stored(json.dumps(stored)) == config
    assert config.whitening_file() == EngineConfig.stored(None).whitening_file()  # learned once, on the float teacher


def test_non_default_models_are_stored_and_read_back():
    config = EngineConfig.new("student", student="s2")
    assert config.as_dict()["student"] == "s2"
    assert EngineConfig.stored(json.dumps(config.as_dict())) == config
    assert config.whitening_file() == "whitening_student_s2_320.npz"


def test_learned_file_names():
    teacher = EngineConfig()
    assert (teacher.whitening_file(), teacher.codebook_file()) == ("whitening_lite0_512.npz", "pq_lite0_512_m32.npz")
    student = EngineConfig.new("student")
    assert (student.whitening_file(), student.codebook_file()) == ("whitening_student_s3_320.npz", "pq_student_s3_320_m32.npz")
    assert learned_file("pq", MODEL_SPECS["efficientnet-lite2"], 384) == "pq_lite2_384_m32.npz"
    with pytest.raises(ValueError):
        learned_file("whitening", DETECTOR_SPEC, 300)


def test_every_record_names_a_listed_file_and_its_shares():
    listed = set(read_manifest()["files"])
    shipped = {s.file for s in MODEL_SPECS.values() if s.role in ("detector", "teacher") or s.name.endswith("s3")}
    assert shipped <= listed
    for spec in MODEL_SPECS.values():
        assert set(spec.shares) <= {s.file for s in MODEL_SPECS.values()}


def test_unknown_or_wrong_role_is_refused():
    with pytest.raises(WeightsError, match="unknown model"):
        model_spec("no-such-model")
    with pytest.raises(ValueError, match="not a detector"):
        model_spec("efficientnet-lite0", "detector")
    with pytest.raises(ValueError, match="unknown model"):
        EngineConfig(model="studnet").whitening_file()


def test_preprocessing_follows_the_records():
    rgb = np.random.default_rng(0).integers(0, 255, (474, 822, 3), dtype=np.uint8)
    det = preprocess(rgb)
    side = DETECTOR_SPEC.photo_input().side
    assert det.shape == (1, side, side, 3) and det.dtype == np.float32
    assert np.array_equal(det[0], cv2.resize(rgb, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32))
    x, sx, sy = teacher_preprocess(rgb, 512)
    w, h = input_size(822, 474, 512)
    assert (w, h) == (512, 288) and x.shape == (1, 3, h, w) and (sx, sy) == (w / 822, h / 474)
    area = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32).transpose(2, 0, 1)
    assert np.array_equal(x[0], area)  # shrinking: area interpolation
    big, _, _ = teacher_preprocess(rgb, 1024)
    linear = cv2.resize(rgb, input_size(822, 474, 1024), interpolation=cv2.INTER_LINEAR)
    assert np.array_equal(big[0], linear.astype(np.float32).transpose(2, 0, 1))  # enlarging: bilinear


def test_constants_have_one_source():
    assert objects_graph.MAPS == (("student_s32", 32, 1280), ("student_s16", 16, 112))
    assert NMS_IOU == 0.6 and MAX_OBJECTS == EngineConfig().max_objects == 8 and VIEW_SIDE == 320
