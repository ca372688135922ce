"""Index format 2 at the row level: the tables, and how one photo's values become bytes.

Kept apart from `store` so that the format-1 upgrade (upgrade.py), which writes
format-2 rows, needs only this and not the store that calls it.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

FORMAT = 3  # 1: images/objects/vectors tables; 2: local features in the photo rows (both upgraded in place, see upgrade.py)

SEGMENTS_TABLE = """CREATE TABLE IF NOT EXISTS segments (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    file TEXT NOT NULL UNIQUE,
    level INTEGER NOT NULL,
    entries INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    sha256 BLOB NOT NULL
)"""
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    # photos' folders, stored once (most photos share a few): text, or bytes when not UTF-8
    "CREATE TABLE IF NOT EXISTS folders (id INTEGER PRIMARY KEY, path NOT NULL UNIQUE)",
    # one row per photo, everything packed (issue #7: bytes per object); no index on the
    # name: writers look paths up in a map they load under the lock (`Store._path_ids`)
    """CREATE TABLE IF NOT EXISTS photos (
    id INTEGER PRIMARY KEY,
    folder INTEGER NOT NULL REFERENCES folders(id),
    name NOT NULL,
    sha256 BLOB NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    indexed_at INTEGER NOT NULL,
    objects BLOB NOT NULL,
    embeddings BLOB NOT NULL,
    keypoints BLOB,
    descriptors BLOB,
    digest BLOB NOT NULL,
    segment INTEGER
)""",
    # the live local-feature segment files (postings.py); a photo's features are in `photos.segment`
    # (keypoints/descriptors are NULL from format 3 on). AUTOINCREMENT: an id is never reused, so
    # entries of a photo left in an older segment can never pass for live ones.
    SEGMENTS_TABLE,
)
# One detected object in `photos.objects`: its box as fractions of the photo's sides in
# 1/65535 steps (under 0.1 px for a 6,000 px side), detector score in 1/255 steps, COCO class.
OBJECT_RECORD = np.dtype([("box", "<u2", (4,)), ("score", "u1"), ("cls", "u1")])


def _db_path_value(path: str) -> str | bytes:
    """How a path is stored: text, or its raw bytes when it is not valid UTF-8 (undecodable file names)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def path_from_db(value: str | bytes) -> str:
    """The path a stored `_db_path_value` stands for."""
    return os.fsdecode(value) if isinstance(value, bytes) else value


def split_path(path: str) -> tuple[str | bytes, str | bytes]:
    """(folder, name) as stored."""
    folder, name = os.path.split(path)
    return _db_path_value(folder), _db_path_value(name)


def pack_objects(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, width: int, height: int) -> bytes:
    """Boxes (photo pixels), scores and classes as `OBJECT_RECORD`s: 10 bytes per object."""
    rec = np.zeros(len(boxes), OBJECT_RECORD)
    sides = np.array([width, height, width, height], np.float64)
    rec["box"] = np.clip(np.rint(np.asarray(boxes, np.float64).reshape(-1, 4) / sides * 65535), 0, 65535)
    rec["score"] = np.clip(np.rint(np.asarray(scores, np.float64) * 255), 0, 255)
    rec["cls"] = np.clip(np.asarray(classes), 0, 255)
    return rec.tobytes()


def unpack_boxes(blob: bytes, width: int, height: int) -> np.ndarray:
    """[K, 4] float32 boxes in photo pixels from one photo's `pack_objects` blob."""
    return unpack_joined_boxes(blob, np.array([[width, height]], np.float32))


def unpack_joined_boxes(blob: bytes, sizes: np.ndarray) -> np.ndarray:
    """[K, 4] float32 boxes in photo pixels from several photos' `pack_objects` blobs joined, `sizes` [K, 2]
    giving each box's photo (width, height)."""
    rec = np.frombuffer(blob, OBJECT_RECORD)
    sides = np.tile(np.asarray(sizes, np.float32).reshape(-1, 2), 2)
    if len(sides) not in (1, len(rec)):
        raise ValueError(f"{len(rec)} boxes but {len(sides)} photo sizes")
    return (rec["box"].astype(np.float32) * (sides / 65535)).reshape(-1, 4)


def row_digest(path: str, sha256: str, objects: bytes, embeddings: bytes, keypoints: bytes, descriptors: bytes) -> bytes:
    """Checksum of everything stored for one photo (detects damage SQLite itself would not)."""
    h = hashlib.blake2b(digest_size=8)
    for part in (os.fsencode(path), bytes.fromhex(sha256), objects, embeddings, keypoints, descriptors):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.digest()
