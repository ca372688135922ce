"""Shared fixtures: small photo sets made from the bundled public-domain examples."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "photos"


def synthetic_photo(seed: int, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A textured BGR photo with shapes (distinct per seed) so it has objects and keypoints."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = cv2.resize(rng.integers(0, 255, (h // 8, w // 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_CUBIC)
    for _ in range(12):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            cv2.circle(img, (x, y), int(rng.integers(8, 40)), c, -1)
        else:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(10, 60)), y + int(rng.integers(10, 60))), c, -1)
        cv2.putText(img, str(seed), (int(rng.integers(0, w - 40)), int(rng.integers(20, h))), cv2.FONT_HERSHEY_SIMPLEX, 1.0, c, 2)
    return img


@pytest.fixture()
def photo_dir(tmp_path: Path) -> Path:
    """Four example photos + three synthetic ones."""
    d = tmp_path / "photos"
    d.mkdir()
    for p in EXAMPLES.iterdir():
        shutil.copy(p, d / p.name)
    for i in range(3):
        cv2.imwrite(str(d / f"synthetic_{i}.png"), synthetic_photo(i))
    return d


def replaced_model_is_used_then_restamped(where: str, stamp: Callable[[str | None], str | None]) -> None:
    """Index coffee.jpg at `where` (either back end); a model-version stamp the shipped teacher replaces must be
    searched as is and restamped by the next writer, any other must be refused. `stamp(v)` writes `v` (unless
    None) into the index's meta and returns the stamp there."""
    from oesir_cli import api
    from oesir_cli.errors import StoreError

    photos = Path(str(where).split(":")[-1]).parent / "photos"
    photos.mkdir()
    shutil.copy(EXAMPLES / "coffee.jpg", photos / "coffee.jpg")
    api.index([photos], index_dir=where, precision="float")  # the float teacher is the one rebuilt files replace
    searcher = api.open_searcher(where)
    engine = searcher.engine
    searcher.close()
    assert engine.equivalent_versions, "the shipped teacher lists the file it replaces"
    older = sorted(engine.equivalent_versions)[0]
    stamp(older)  # what the replaced teacher file wrote
    searcher = api.open_searcher(where)
    assert api.search_file(searcher, EXAMPLES / "coffee.jpg", top=1).matches  # searched as is
    searcher.close()
    assert stamp(None) == older
    api.index([photos], index_dir=where)
    assert stamp(None) == engine.version  # a writer restamps it
    stamp(older.replace(older.split("@")[1][:12], "0" * 12))  # another network altogether
    with pytest.raises(StoreError, match="was built with"):
        api.open_searcher(where)
