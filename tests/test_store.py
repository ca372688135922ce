"""The catalogue search loads from the store: every photo's objects where its own rows say."""

from __future__ import annotations

import numpy as np
import pytest

from oesir_cli.schema import pack_objects, unpack_boxes, unpack_joined_boxes
from oesir_cli.store import ImageRecord, PhotoData, Store


def _photo_data(rng: np.random.Generator, k: int, width: int, height: int, dim: int) -> PhotoData:
    corner = rng.uniform(0, 0.5, (k, 2)) * (width, height)
    boxes = np.concatenate([corner, corner + rng.uniform(0.1, 0.5, (k, 2)) * (width, height)], 1).astype(np.float32)
    return PhotoData(
        boxes, rng.uniform(0, 1, k), rng.integers(0, 90, k), rng.normal(size=(k, dim)).astype(np.float32),
        np.zeros((0, 4), np.float32), np.zeros((0, 128), np.uint8),
    )  # fmt: skip


def test_the_catalogue_holds_each_photos_own_objects(tmp_path):
    rng = np.random.default_rng(3)
    store = Store(tmp_path / "idx", create=True)
    dim, counts = 8, [3, 1, 0, 9, 2]  # a photo without objects too
    sizes = [(640, 480), (300, 500), (64, 64), (1024, 768), (33, 77)]
    try:
        with store.transaction() as db:
            store.set_meta("model_version", "m@1")
            store.set_meta("embedding_dim", str(dim))
            for i, (k, (w, h)) in enumerate(zip(counts, sizes)):
                rec = ImageRecord(0, f"/photos/{i}.jpg", f"{i:064x}", 1, 1, w, h)
                store.put(db, rec, _photo_data(rng, k, w, h, dim))
        c = store.load_all()
        rows = store.db.execute("SELECT width, height, objects, embeddings FROM photos ORDER BY id").fetchall()
        assert c.paths == [f"/photos/{i}.jpg" for i in range(5)]
        assert np.array_equal(c.sizes, sizes)
        assert np.array_equal(c.object_image, np.repeat(np.arange(5), counts))
        assert np.array_equal(c.object_index, np.concatenate([np.arange(k) for k in counts]))
        assert np.array_equal(c.object_boxes, np.concatenate([unpack_boxes(o, w, h) for w, h, o, _ in rows]))
        assert np.array_equal(c.codes, np.frombuffer(b"".join(r[3] for r in rows), np.uint8).reshape(len(c.codes), -1))
        assert c.codes.flags.writeable and len(c.codes) == sum(counts)
    finally:
        store.close()


def test_a_photo_whose_boxes_and_embeddings_disagree_loses_its_objects_only(tmp_path):
    rng = np.random.default_rng(4)
    store = Store(tmp_path / "idx", create=True)
    try:
        with store.transaction() as db:
            store.set_meta("model_version", "m@1")
            store.set_meta("embedding_dim", "8")
            for i in range(3):
                rec = ImageRecord(0, f"/photos/{i}.jpg", f"{i:064x}", 1, 1, 100, 100)
                store.put(db, rec, _photo_data(rng, 3, 100, 100, 8))
            one_box = pack_objects(np.array([[0, 0, 10, 10]], np.float32), np.ones(1), np.zeros(1, int), 100, 100)
            db.execute("UPDATE photos SET objects=? WHERE name='1.jpg'", (one_box,))
        c = store.load_all()
        assert len(c.paths) == 3 and np.array_equal(c.object_image, [0, 0, 0, 2, 2, 2])
        assert len(c.object_boxes) == len(c.codes) == 6
        assert [path for _, path, _ in store.damaged_rows()] == ["/photos/1.jpg"]  # `oesir check` names it
    finally:
        store.close()


def test_joined_boxes_are_each_photos_boxes():
    a = pack_objects(np.array([[1, 2, 30, 40], [0, 0, 640, 480]], np.float32), np.ones(2), np.zeros(2, int), 640, 480)
    b = pack_objects(np.array([[5, 5, 20, 90]], np.float32), np.ones(1), np.zeros(1, int), 33, 100)
    joined = unpack_joined_boxes(a + b, np.array([[640, 480], [640, 480], [33, 100]]))
    assert np.array_equal(joined, np.concatenate([unpack_boxes(a, 640, 480), unpack_boxes(b, 33, 100)]))
    with pytest.raises(ValueError):
        unpack_joined_boxes(a + b, np.array([[640, 480], [33, 100]]))
