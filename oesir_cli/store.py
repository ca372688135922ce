"""The index on disk: SQLite is the source of truth, hnswlib graphs are derived.

Layout of an index folder:
    oesir.sqlite        images, objects, embeddings and local descriptors (WAL mode)
    objects.hnsw(.json) hnswlib graph over object embeddings + its stamp
    local.hnsw(.json)   hnswlib graph over local descriptors + its stamp
    lock                held (flock) by the one writer

Every change is a SQLite transaction, so a crash or kill loses at most the
photos of the batch in flight. Each photo's row carries a digest of what is
stored for it (path, sha256, boxes, vectors), so `oesir check` can tell which
photos a damaged file affects. The graphs carry the `generation` of the data
they were built from, their size and sha256, and are rebuilt when any of it
differs; they are written to a temporary file, fsync'ed and renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .codec import Codec, CodecError, make_codec

FORMAT = 1
DB_NAME = "oesir.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    indexed_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL,
    x1 REAL, y1 REAL, x2 REAL, y2 REAL,
    score REAL, class INTEGER,
    PRIMARY KEY (image_id, idx)
);
CREATE TABLE IF NOT EXISTS vectors (
    image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    embeddings BLOB NOT NULL,
    keypoints BLOB NOT NULL,
    descriptors BLOB NOT NULL,
    digest TEXT
);
"""
GRAPH_FILES = ("objects.hnsw", "objects.hnsw.json", "local.hnsw", "local.hnsw.json", "objects.ivfpq", "objects.ivfpq.json")
DB_FILES = (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm")


class IndexError_(RuntimeError):
    """The index cannot be used as asked (other model, locked, damaged); one-line message."""


@dataclass(frozen=True)
class ImageRecord:
    id: int
    path: str
    sha256: str
    size: int
    mtime_ns: int
    width: int
    height: int


@dataclass(frozen=True)
class PhotoData:
    """What is stored for one photo besides its record."""

    boxes: np.ndarray  # [K, 4] float32, photo pixels
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K]
    embeddings: np.ndarray  # [K, D] float32 (the store encodes them with the index's codec)
    keypoints: np.ndarray  # [N, 4] float32
    descriptors: np.ndarray  # [N, 128] uint8


def default_index_dir() -> Path:
    """`$OESIR_INDEX`, else `./.oesir`."""
    return Path(os.environ.get("OESIR_INDEX", ".oesir"))


def db_path_value(path: str) -> str | bytes:
    """How a path is stored: text, or its raw bytes when it is not valid UTF-8 (undecodable file names)."""
    try:
        path.encode("utf-8")
        return path
    except UnicodeEncodeError:
        return os.fsencode(path)


def path_from_db(value: str | bytes) -> str:
    return os.fsdecode(value) if isinstance(value, bytes) else value


def row_digest(path: str, sha256: str, boxes: np.ndarray, embeddings: bytes, keypoints: bytes, descriptors: bytes) -> str:
    """Checksum of everything stored for one photo (detects damage SQLite itself would not)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (os.fsencode(path), sha256.encode(), np.asarray(boxes, np.float32).tobytes(), embeddings, keypoints, descriptors):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


@contextlib.contextmanager
def writer_lock(directory: Path, wait: bool = False) -> Iterator[None]:
    """Hold the index folder's writer lock; a second writer gets a clear error (or waits)."""
    fd = os.open(Path(directory) / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise IndexError_(f"index at {directory} is being written by another oesir process") from None
            raise
        yield
    finally:
        os.close(fd)


def remove_temp_files(directory: Path) -> int:
    """Delete temporary files left by a killed writer (call with the writer lock held)."""
    n = 0
    for p in Path(directory).glob(".*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()
            n += 1
    return n


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Have `write` fill a temporary file, fsync it, rename it over `path`: readers see old or new, never half."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """`atomic_write` of a bytes payload."""
    atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """Open index folder. Readers need no lock; `writer()` takes the folder's lock."""

    def __init__(self, directory: Path, create: bool = False):
        self.dir = Path(directory)
        self._codec: Codec | None = None
        db_path = self.dir / DB_NAME
        if not db_path.exists():
            if not create:
                raise IndexError_(f"no index at {self.dir} (run `oesir index PATH --index {self.dir}` first)")
            self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(db_path, timeout=60.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            self.db.executescript(SCHEMA) if create else None
            self.db.execute("SELECT count(*) FROM images").fetchone()
        except sqlite3.DatabaseError as exc:
            raise IndexError_(f"index database {db_path} is damaged or not an oesir index ({exc})") from None

    # -- meta -------------------------------------------------------------
    def meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    @property
    def generation(self) -> int:
        return int(self.meta("generation", "0") or 0)

    def codec(self) -> Codec:
        """How this index stores embeddings (`meta.codec`; indexes from before codecs are float32)."""
        if self._codec is None:
            self._codec = self._open_codec()
        return self._codec

    def _open_codec(self) -> Codec:
        name, dim = self.meta("codec", "float32") or "float32", self.embedding_dim()
        if name != "pq":
            return make_codec(name, dim)
        from .registry import WeightsError, verified_file

        file, _, sha = (self.meta("codec_file") or "@").partition("@")
        try:
            path, digest = verified_file(file)
        except WeightsError as exc:
            raise IndexError_(f"index at {self.dir} needs the PQ codebook {file}: {exc}") from None
        if not digest.startswith(sha):
            raise IndexError_(f"index at {self.dir} was encoded with another {file} (sha256 {sha}...); re-index with --rebuild")
        try:
            return make_codec(name, dim, path)
        except CodecError as exc:
            raise IndexError_(f"index at {self.dir}: {exc}") from None

    def set_codec(self, name: str, codebook: str | None = None) -> None:
        """Record the codec (inside a transaction); `codebook` is 'file@sha256' for pq."""
        self.set_meta("codec", name)
        self.set_meta("codec_file", codebook or "")
        self._codec = None

    def transcode(self, target: Codec, codebook: str | None = None, progress: Callable[[int, int], None] | None = None) -> int:
        """Re-encode every stored embedding with `target` in one transaction (lossy one way: float32 > float16 > pq).

        Each photo's digest is recomputed, so `oesir check` still vouches for it. Returns the photos re-encoded.
        """
        source = self.codec()
        ids = [r[0] for r in self.db.execute("SELECT image_id FROM vectors").fetchall()]
        with self.transaction() as db:
            for i, image_id in enumerate(ids):
                if progress:
                    progress(i, len(ids))
                (blob,) = db.execute("SELECT embeddings FROM vectors WHERE image_id=?", (image_id,)).fetchone()
                codes = np.frombuffer(blob, np.uint8).reshape(-1, source.code_size)
                db.execute(
                    "UPDATE vectors SET embeddings=? WHERE image_id=?", (target.encode(source.decode(codes)).tobytes(), image_id)
                )
                db.execute("UPDATE vectors SET digest=? WHERE image_id=?", (self._compute_digest(image_id), image_id))
            self.set_codec(target.name, codebook)
        self.db.execute("VACUUM")  # give the freed pages back to the file system (the point of a smaller codec)
        return len(ids)

    def check_model(self, model_version: str, create: bool) -> None:
        """Refuse an index built by another model version (or set it on a new index)."""
        have = self.meta("model_version")
        if have is None:
            if not create:
                raise IndexError_(f"index at {self.dir} has no model version; rebuild it with `oesir index --rebuild`")
            with self.transaction():
                self.set_meta("model_version", model_version)
                self.set_meta("format", str(FORMAT))
        elif have != model_version:
            raise IndexError_(
                f"index at {self.dir} was built with {have}, this oesir uses {model_version}; "
                "re-index with `oesir index --rebuild`"
            )

    # -- locking ----------------------------------------------------------
    @contextlib.contextmanager
    def writer(self, wait: bool = False) -> Iterator[None]:
        """Hold the folder's writer lock, prepared for writing (see `prepare_for_writing`)."""
        with writer_lock(self.dir, wait):
            self.prepare_for_writing()
            yield

    def prepare_for_writing(self) -> None:
        """With the lock held: drop temp files a killed writer left, give old-format rows their digests."""
        remove_temp_files(self.dir)
        self._migrate()

    def _migrate(self) -> None:
        """Indexes from before row digests: add the column and fill it."""
        cols = [r[1] for r in self.db.execute("PRAGMA table_info(vectors)")]
        if "digest" not in cols:
            self.db.execute("ALTER TABLE vectors ADD COLUMN digest TEXT")
        missing = self.db.execute("SELECT image_id FROM vectors WHERE digest IS NULL").fetchall()
        if missing:
            with self.transaction(changes_vectors=False) as db:
                for (image_id,) in missing:
                    db.execute("UPDATE vectors SET digest=? WHERE image_id=?", (self._compute_digest(image_id), image_id))

    def _compute_digest(self, image_id: int) -> str:
        path, sha, e, k, d = self.db.execute(
            "SELECT i.path, i.sha256, v.embeddings, v.keypoints, v.descriptors FROM images i "
            "JOIN vectors v ON v.image_id = i.id WHERE i.id=?",
            (image_id,),
        ).fetchone()
        boxes = self.db.execute("SELECT x1, y1, x2, y2 FROM objects WHERE image_id=? ORDER BY idx", (image_id,)).fetchall()
        return row_digest(path_from_db(path), sha, np.asarray(boxes, np.float32).reshape(-1, 4), e, k, d)

    def damaged_rows(self) -> list[tuple[int, str, str]]:
        """(image id, path, problem) for every photo whose stored data fails its digest or is incomplete."""
        bad = []
        rows = self.db.execute("SELECT i.id, i.path, v.digest FROM images i LEFT JOIN vectors v ON v.image_id = i.id")
        dim = self.embedding_dim()
        code_size = self.codec().code_size if dim else 0
        for image_id, path, digest in rows.fetchall():
            path = path_from_db(path)
            if digest is None:
                bad.append((image_id, path, "no stored vectors" if not self._has_vectors(image_id) else "no checksum"))
                continue
            try:
                ok = self._compute_digest(image_id) == digest
                n_obj = self.db.execute("SELECT count(*) FROM objects WHERE image_id=?", (image_id,)).fetchone()[0]
                n_emb = len(self.db.execute("SELECT embeddings FROM vectors WHERE image_id=?", (image_id,)).fetchone()[0])
                ok = ok and dim > 0 and n_emb == n_obj * code_size
            except (sqlite3.DatabaseError, TypeError, ValueError):
                ok = False
            if not ok:
                bad.append((image_id, path, "stored data does not match its checksum"))
        return bad

    def _has_vectors(self, image_id: int) -> bool:
        return self.db.execute("SELECT 1 FROM vectors WHERE image_id=?", (image_id,)).fetchone() is not None

    def clear(self) -> None:
        """Forget every photo and the model settings (for `--rebuild`); one transaction."""
        with self.transaction() as db:
            db.execute("DELETE FROM images")
            db.execute("DELETE FROM meta WHERE key IN ('model_version', 'engine_config', 'embedding_dim', 'codec', 'codec_file')")
        self._codec = None

    @contextlib.contextmanager
    def transaction(self, changes_vectors: bool = True) -> Iterator[sqlite3.Connection]:
        """One all-or-nothing write. Unless `changes_vectors` is False, it moves the generation on,
        which makes the derived graphs stale: record-only updates (a new mtime for the same bytes,
        row digests) must say so, or they cost a full graph rebuild."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        else:
            if changes_vectors:
                self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                self.db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('generation', '1')")
            self.db.execute("COMMIT")

    # -- records ----------------------------------------------------------
    def images(self) -> dict[str, ImageRecord]:
        rows = self.db.execute("SELECT id, path, sha256, size, mtime_ns, width, height FROM images")
        return {path_from_db(r[1]): ImageRecord(r[0], path_from_db(r[1]), *r[2:]) for r in rows}

    def count(self) -> tuple[int, int]:
        photos = self.db.execute("SELECT count(*) FROM images").fetchone()[0]
        objects = self.db.execute("SELECT count(*) FROM objects").fetchone()[0]
        return photos, objects

    def put(self, db: sqlite3.Connection, rec: ImageRecord, data: PhotoData) -> None:
        """Insert or replace one photo (call inside `transaction()`)."""
        path = db_path_value(rec.path)
        db.execute("DELETE FROM images WHERE path=?", (path,))
        cur = db.execute(
            "INSERT INTO images(path, sha256, size, mtime_ns, width, height, indexed_at) VALUES (?,?,?,?,?,?,?)",
            (path, rec.sha256, rec.size, rec.mtime_ns, rec.width, rec.height, time.time()),
        )
        image_id = cur.lastrowid
        db.executemany(
            "INSERT INTO objects(image_id, idx, x1, y1, x2, y2, score, class) VALUES (?,?,?,?,?,?,?,?)",
            [
                (image_id, i, *map(float, b), float(s), int(c))
                for i, (b, s, c) in enumerate(zip(data.boxes, data.scores, data.classes))
            ],
        )
        blobs = (
            self.codec().encode(data.embeddings).tobytes(),
            np.ascontiguousarray(data.keypoints, np.float32).tobytes(),
            np.ascontiguousarray(data.descriptors, np.uint8).tobytes(),
        )
        db.execute(
            "INSERT INTO vectors(image_id, embeddings, keypoints, descriptors, digest) VALUES (?,?,?,?,?)",
            (image_id, *blobs, row_digest(rec.path, rec.sha256, data.boxes, *blobs)),
        )

    def touch(self, db: sqlite3.Connection, rec: ImageRecord) -> None:
        """Same bytes, new size/mtime record (call inside `transaction()`)."""
        db.execute("UPDATE images SET size=?, mtime_ns=? WHERE path=?", (rec.size, rec.mtime_ns, db_path_value(rec.path)))

    def delete(self, db: sqlite3.Connection, paths: list[str]) -> None:
        db.executemany("DELETE FROM images WHERE path=?", [(db_path_value(p),) for p in paths])

    def delete_ids(self, db: sqlite3.Connection, ids: list[int]) -> None:
        db.executemany("DELETE FROM images WHERE id=?", [(i,) for i in ids])

    def content(self) -> list[tuple]:
        """Everything stored per photo, sorted by path, ids left out: equal content means an equal index."""
        rows = []
        for image_id, path, sha, size, mtime, w, h in self.db.execute(
            "SELECT id, path, sha256, size, mtime_ns, width, height FROM images"
        ).fetchall():
            objs = self.db.execute(
                "SELECT idx, x1, y1, x2, y2, score, class FROM objects WHERE image_id=? ORDER BY idx", (image_id,)
            ).fetchall()
            vec = self.db.execute(
                "SELECT embeddings, keypoints, descriptors, digest FROM vectors WHERE image_id=?", (image_id,)
            ).fetchone()
            rows.append((path_from_db(path), sha, size, mtime, w, h, tuple(objs), vec))
        return sorted(rows, key=lambda r: os.fsencode(r[0]))

    def embedding_dim(self) -> int:
        return int(self.meta("embedding_dim", "0") or 0)

    def load_all(self) -> Catalogue:
        """Everything search needs, as flat arrays: one read transaction, so one committed state."""
        self.db.execute("BEGIN")
        try:
            return self._load_all()
        finally:
            self.db.execute("COMMIT")

    def _load_all(self) -> Catalogue:
        codec = self.codec()
        size = codec.code_size
        ids, paths, sizes = [], [], []
        obj_img, obj_idx, boxes, embs = [], [], [], []
        kp_img, kps, descs = [], [], []
        box_rows = self.db.execute("SELECT image_id, idx, x1, y1, x2, y2 FROM objects ORDER BY image_id, idx").fetchall()
        box_map: dict[int, list] = {}
        for r in box_rows:
            box_map.setdefault(r[0], []).append(r[2:])
        q = (
            "SELECT i.id, i.path, i.width, i.height, v.embeddings, v.keypoints, v.descriptors "
            "FROM images i JOIN vectors v ON v.image_id = i.id ORDER BY i.id"
        )
        for image_id, path, w, h, e, k, d in self.db.execute(q):
            ids.append(image_id)
            paths.append(path_from_db(path))
            sizes.append((w, h))
            emb = np.frombuffer(e, np.uint8).reshape(-1, size)
            embs.append(emb)
            boxes.append(np.asarray(box_map.get(image_id, []), np.float32).reshape(-1, 4))
            obj_img.append(np.full(len(emb), len(ids) - 1, np.int32))
            obj_idx.append(np.arange(len(emb), dtype=np.int32))
            kp = np.frombuffer(k, np.float32).reshape(-1, 4)
            kps.append(kp)
            descs.append(np.frombuffer(d, np.uint8).reshape(-1, 128))
            kp_img.append(np.full(len(kp), len(ids) - 1, np.int32))

        def cat(parts: list, shape: tuple, dtype) -> np.ndarray:
            return np.concatenate(parts) if parts else np.zeros(shape, dtype)

        return Catalogue(
            image_ids=np.asarray(ids, np.int64),
            paths=paths,
            sizes=np.asarray(sizes, np.int32).reshape(-1, 2),
            object_image=cat(obj_img, (0,), np.int32),
            object_index=cat(obj_idx, (0,), np.int32),
            object_boxes=cat(boxes, (0, 4), np.float32),
            codes=cat(embs, (0, size), np.uint8),
            codec=codec,
            keypoint_image=cat(kp_img, (0,), np.int32),
            keypoints=cat(kps, (0, 4), np.float32),
            descriptors=cat(descs, (0, 128), np.uint8),
            generation=self.generation,
        )

    def close(self) -> None:
        self.db.close()


@dataclass
class Catalogue:
    """The whole index in memory, rows aligned: photo i is `paths[i]`."""

    image_ids: np.ndarray
    paths: list[str]
    sizes: np.ndarray
    object_image: np.ndarray
    object_index: np.ndarray
    object_boxes: np.ndarray
    codes: np.ndarray  # [objects, codec.code_size] uint8: the stored embeddings
    codec: Codec
    keypoint_image: np.ndarray
    keypoints: np.ndarray
    descriptors: np.ndarray
    generation: int

    @property
    def embeddings(self) -> np.ndarray:
        """Stored embeddings as float32 (for pq: their reconstructions)."""
        return self.codec.decode(self.codes)


def write_stamp(path: Path, stamp: dict) -> None:
    atomic_write_bytes(path, json.dumps(stamp).encode())


def read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
