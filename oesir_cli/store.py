"""The index on disk: SQLite is the source of truth, hnswlib graphs are derived.

Layout of an index folder:
    oesir.sqlite         one packed row per photo: record, objects, embeddings; the live segments (WAL mode)
    local-*.ivf          local-feature segments: inverted lists of coded keypoints (postings.py), each
                         written once, listed in SQLite with its size and sha256
    objects.hnsw(.json)  hnswlib graph over object embeddings + its stamp (large indexes only)
    objects.ivfpq(.json) or, for pq codes with faiss installed, faiss IVF-PQ over them + its stamp
    lock                 held (flock) by the one writer

Every change is a SQLite transaction, so a crash or kill loses at most the
photos of the batch in flight. Each photo's row carries a digest of what is
stored for it (path, sha256, boxes, vectors), and each segment its sha256, so
`oesir check` can tell which photos a damaged file affects. A segment file is
written and fsync'ed before the transaction that lists it commits; one that
no committed row lists (a crash in between) is deleted by the next writer. The graphs carry the `generation` of the data
they were built from, their size and sha256, and are rebuilt when any of it
differs; they are written to a temporary file, fsync'ed and renamed into place.

A write that fails for lack of space raises `DiskFullError` (whatever layer
noticed it: SQLite or the file system), after the transaction is rolled back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from .codec import Codec, CodecError, make_codec
from .errors import DiskFullError, StoreError
from .local_index import LocalIndex
from .postings import FANOUT, SEGMENT_SUFFIX, Entries, Segment, merge_into, pack_geometry, write_segment
from .registry import WeightsError, sha256_file, verified_file
from .schema import FORMAT, OBJECT_RECORD, SCHEMA, pack_objects, path_from_db, row_digest, split_path, unpack_joined_boxes
from .upgrade import upgrade_format1, upgrade_format2
from .vocabulary import VOCABULARY_FILE, Vocabulary, as_float

DB_NAME = "oesir.sqlite"
DB_FILES = (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm")
# The derived structures (see graphs.py), each followed by its stamp: the one list of them.
OBJECT_FILES = ("objects.hnsw", "objects.hnsw.json", "objects.ivfpq", "objects.ivfpq.json")
LOCAL_FILES = ("local.hnsw", "local.hnsw.json")  # format 2's local graph: removed by the upgrade
GRAPH_FILES = OBJECT_FILES + LOCAL_FILES
SEGMENT_GLOB = "local-*" + SEGMENT_SUFFIX


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


@contextlib.contextmanager
def writer_lock(directory: Path, wait: bool = False) -> Iterator[None]:
    """Hold the index folder's writer lock; a second writer gets a clear error (or waits)."""
    fd = os.open(Path(directory) / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise StoreError(f"index at {directory} is being written by another oesir process") from None
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
    """Open index folder. Readers need no lock; a writer holds `writer_lock` and calls `prepare_for_writing`."""

    def __init__(self, directory: Path, create: bool = False, locked: bool = False):
        """Open (or with `create`, make) the index at `directory`. `locked`: the caller holds the
        writer lock; an index in an older format is upgraded in place, under that lock or one taken here."""
        self.dir = Path(directory)
        self._codec: Codec | None = None
        self._vocabulary: tuple[Vocabulary, str] | None = None
        self._ids: dict[str, int] | None = None  # path -> photo id, for writers (see `_path_ids`)
        self._folders: dict[str | bytes, int] | None = None
        db_path = self.dir / DB_NAME
        if not db_path.exists():
            if not create:
                raise StoreError(f"no index at {self.dir} (run `oesir index PATH --index {self.dir}` first)")
            self.dir.mkdir(parents=True, exist_ok=True)
        try:
            with disk_full_as_store_error(self.dir):  # a new index on a full disk
                self.db = sqlite3.connect(db_path, timeout=60.0, isolation_level=None)
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.execute("PRAGMA foreign_keys=ON")
                tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "images" in tables:
                    self._upgrade(locked, upgrade_format1)
                elif create and "photos" not in tables:
                    self.db.execute("BEGIN IMMEDIATE")  # all tables at once: a reader never sees half a schema
                    for statement in SCHEMA:
                        self.db.execute(statement)
                    self.db.execute("COMMIT")
                elif "photos" not in tables:
                    self.db.close()
                    raise StoreError(f"no index at {self.dir} yet (it is being created, or its creation never finished)")
                fmt = int(self.meta("format", str(FORMAT)) or FORMAT)
                if fmt == 2:
                    self._upgrade(locked, upgrade_format2)
                    fmt = FORMAT
                self.db.execute("SELECT count(*) FROM photos").fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"index database {db_path} is damaged or not an oesir index ({exc})") from None
        if fmt > FORMAT:
            raise StoreError(f"index at {self.dir} was written by a newer oesir (format {fmt}; this one reads {FORMAT})")

    def _upgrade(self, locked: bool, upgrade: Callable) -> None:
        """Rewrite an index of an older on-disk format (see upgrade.py), under the writer lock."""
        try:
            if locked:
                self._run_upgrade(upgrade)
            else:
                with writer_lock(self.dir):
                    self._run_upgrade(upgrade)
        except (OSError, sqlite3.OperationalError) as exc:
            raise StoreError(
                f"index at {self.dir} is in the on-disk format of an older oesir and must be upgraded once, "
                f"by any oesir command run by a user who can write it ({exc})"
            ) from None

    def _run_upgrade(self, upgrade: Callable) -> None:
        if upgrade is upgrade_format1:
            upgrade_format1(self.db, self.transaction(changes_vectors=False))
        upgrade_format2(self)
        self.prepare_for_writing()
        self.merge_segments()
        for name in LOCAL_FILES:  # format 2's graph over the descriptors now in segments
            (self.dir / name).unlink(missing_ok=True)

    # -- meta -------------------------------------------------------------
    @property
    def location(self) -> str:
        """The index location as messages and provenance show it."""
        return str(self.dir)

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
        file, _, sha = (self.meta("codec_file") or "@").partition("@")
        try:
            path, digest = verified_file(file)
        except WeightsError as exc:
            raise StoreError(f"index at {self.dir} needs the PQ codebook {file}: {exc}") from None
        if not digest.startswith(sha):
            raise StoreError(f"index at {self.dir} was encoded with another {file} (sha256 {sha}...); re-index with --rebuild")
        try:
            return make_codec(name, dim, path)
        except CodecError as exc:
            raise StoreError(f"index at {self.dir}: {exc}") from None

    def set_codec(self, name: str, codebook: str | None = None) -> None:
        """Record the codec (inside a transaction); `codebook` is 'file@sha256' for pq."""
        self.set_meta("codec", name)
        self.set_meta("codec_file", codebook or "")
        self._codec = None

    def transcode(self, target: Codec, codebook: str | None = None, progress: Callable[[int, int], None] | None = None) -> int:
        """Re-encode every stored embedding with `target` in one transaction (lossy one way: float32 > float16 > pq).

        Each photo's digest is recomputed, so `oesir check` still vouches for it (a photo whose data
        already failed its digest keeps failing it). Returns the photos re-encoded.
        """
        source = self.codec()
        ids = [r[0] for r in self.db.execute("SELECT id FROM photos").fetchall()]
        folders = self._folder_paths()
        with self.transaction() as db:
            for i, image_id in enumerate(ids):
                if progress:
                    progress(i, len(ids))
                row = db.execute(f"SELECT {_ROW_COLUMNS} FROM photos WHERE id=?", (image_id,)).fetchone()
                intact = _row_digest(row, folders) == row[-1]
                codes = np.frombuffer(row[6], np.uint8).reshape(-1, source.code_size)
                row = (*row[:6], target.encode(source.decode(codes)).tobytes(), *row[7:])
                db.execute(
                    "UPDATE photos SET embeddings=?, digest=? WHERE id=?",
                    (row[6], _row_digest(row, folders) if intact else b"", image_id),
                )
            self.set_codec(target.name, codebook)
        with disk_full_as_store_error(self.dir):
            self.db.execute("VACUUM")  # give the freed pages back to the file system (the point of a smaller codec)
        return len(ids)

    def check_model(self, model_version: str, create: bool, equivalent: Collection[str] = ()) -> None:
        """Refuse an index built by another model version (or set it on a new index). A version in `equivalent`
        (the same networks in replaced files) is accepted, and restamped when writing (`create`)."""
        have = self.meta("model_version")
        if have is None:
            if not create:
                raise StoreError(f"index at {self.dir} has no model version; rebuild it with `oesir index --rebuild`")
            with self.transaction():
                self.set_meta("model_version", model_version)
                self.set_meta("format", str(FORMAT))
        elif have in equivalent:
            if create:
                with self.transaction():
                    self.set_meta("model_version", model_version)
        elif have != model_version:
            raise StoreError(
                f"index at {self.dir} was built with {have}, this oesir uses {model_version}; "
                "re-index with `oesir index --rebuild`"
            )

    # -- locking ----------------------------------------------------------
    def prepare_for_writing(self) -> None:
        """With the lock held: drop temp files a killed writer left."""
        remove_temp_files(self.dir)
        self.remove_orphan_segments()

    def damaged_rows(self) -> list[tuple[int, str, str]]:
        """(photo id, path, problem) for every photo whose stored data fails its digest or is incomplete."""
        bad = []
        dim = self.embedding_dim()
        code_size = self.codec().code_size if dim else 0
        folders = self._folder_paths()
        for row in self.db.execute(f"SELECT {_ROW_COLUMNS} FROM photos"):  # streamed: an index may not fit in memory
            try:
                path = _path_of(row, folders)
                n_obj, rest = divmod(len(row[5]), OBJECT_RECORD.itemsize)
                ok = dim > 0 and rest == 0 and len(row[6]) == n_obj * code_size and _row_digest(row, folders) == row[-1]
            except (KeyError, TypeError, ValueError):
                path, ok = f"<photo {row[0]}>", False
            if not ok:
                bad.append((row[0], path, "stored data does not match its checksum"))
        return bad

    def clear(self) -> None:
        """Forget every photo and the model settings (for `--rebuild`); one transaction."""
        with self.transaction() as db:
            db.execute("DELETE FROM photos")
            db.execute("DELETE FROM folders")
            db.execute("DELETE FROM meta WHERE key IN ('model_version', 'engine_config', 'embedding_dim', 'codec', 'codec_file')")
        self._codec = None

    @contextlib.contextmanager
    def transaction(self, changes_vectors: bool = True) -> Iterator[sqlite3.Connection]:
        """One all-or-nothing write. Unless `changes_vectors` is False, it moves the generation on,
        which makes the derived graphs stale: record-only updates (a new mtime for the same bytes,
        row digests) must say so, or they cost a full graph rebuild.

        Any failure, the commit's included, rolls back; one for lack of space raises `DiskFullError`."""
        with disk_full_as_store_error(self.dir):
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                if changes_vectors:
                    self.db.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'generation'")
                    self.db.execute("INSERT OR IGNORE INTO meta(key, value) VALUES ('generation', '1')")
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:  # SQLite rolls back by itself after some errors (a full disk among them)
                    self.db.execute("ROLLBACK")
                self._ids = self._folders = None  # the maps may hold rows that were never committed
                raise

    # -- records ----------------------------------------------------------
    def _folder_paths(self) -> dict[int, str]:
        return {i: path_from_db(p) for i, p in self.db.execute("SELECT id, path FROM folders")}

    def _path_ids(self) -> dict[str, int]:
        """path -> photo id, loaded once per writer (photos have no index on their name: bytes per object)."""
        if self._ids is None:
            folders = self._folder_paths()
            rows = self.db.execute("SELECT id, folder, name FROM photos")
            self._ids = {os.path.join(folders[f], path_from_db(n)): i for i, f, n in rows}
        return self._ids

    def _folder_id(self, db: sqlite3.Connection, folder: str | bytes) -> int:
        if self._folders is None:
            self._folders = {p: i for i, p in db.execute("SELECT id, path FROM folders")}
        if folder not in self._folders:
            self._folders[folder] = db.execute("INSERT INTO folders(path) VALUES (?)", (folder,)).lastrowid
        return self._folders[folder]

    def images(self) -> dict[str, ImageRecord]:
        folders = self._folder_paths()
        rows = self.db.execute("SELECT id, folder, name, sha256, size, mtime_ns, width, height FROM photos")
        out = {}
        for i, f, n, sha, size, mtime, w, h in rows:
            path = os.path.join(folders[f], path_from_db(n))
            out[path] = ImageRecord(i, path, sha.hex(), size, mtime, w, h)
        return out

    def sha256_of(self, image_ids: list[int]) -> dict[int, str]:
        """Hex sha256 of the photos with these ids, as indexed (ids no longer present are left out)."""
        if not image_ids:
            return {}
        marks = ",".join("?" * len(image_ids))
        rows = self.db.execute(f"SELECT id, sha256 FROM photos WHERE id IN ({marks})", [int(i) for i in image_ids])
        return {int(i): sha.hex() for i, sha in rows}

    def count(self) -> tuple[int, int]:
        photos, packed = self.db.execute("SELECT count(*), coalesce(sum(length(objects)), 0) FROM photos").fetchone()
        return photos, packed // OBJECT_RECORD.itemsize

    def put(self, db: sqlite3.Connection, rec: ImageRecord, data: PhotoData) -> int:
        """Insert or replace one photo's record, objects and embeddings (call inside `transaction()`); its id.

        Its local features go in with the batch's segment (`add_local_features`)."""
        ids = self._path_ids()
        if rec.path in ids:
            db.execute("DELETE FROM photos WHERE id=?", (ids.pop(rec.path),))
        folder, name = split_path(rec.path)
        objects = pack_objects(data.boxes, data.scores, data.classes, rec.width, rec.height)
        embeddings = self.codec().encode(data.embeddings).tobytes()
        cur = db.execute(
            "INSERT INTO photos(folder, name, sha256, size, mtime_ns, width, height, indexed_at, objects, "
            "embeddings, digest) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
            (
                self._folder_id(db, folder), name, bytes.fromhex(rec.sha256), rec.size, rec.mtime_ns, rec.width,
                rec.height, int(time.time()), objects, embeddings,
                row_digest(rec.path, rec.sha256, objects, embeddings, b"", b""),
            ),
        )  # fmt: skip
        ids[rec.path] = cur.lastrowid
        return cur.lastrowid

    def touch(self, db: sqlite3.Connection, rec: ImageRecord) -> None:
        """Same bytes, new size/mtime record (call inside `transaction()`)."""
        db.execute("UPDATE photos SET size=?, mtime_ns=? WHERE id=?", (rec.size, rec.mtime_ns, self._path_ids()[rec.path]))

    def delete(self, db: sqlite3.Connection, paths: list[str]) -> None:
        ids = self._path_ids()
        self.delete_ids(db, [ids[p] for p in paths if p in ids])

    def delete_ids(self, db: sqlite3.Connection, ids: list[int]) -> None:
        db.executemany("DELETE FROM photos WHERE id=?", [(i,) for i in ids])
        self._ids = None

    def content(self) -> list[tuple]:
        """Everything stored per photo (local features included), sorted by path, ids left out: equal content
        means an equal index."""
        folders = self._folder_paths()
        local = self.local_content()
        rows = [
            (_path_of(r, folders), r[3].hex(), *r[4:8], r[8:], local.get(r[0], b""))
            for r in self.db.execute(
                "SELECT id, folder, name, sha256, size, mtime_ns, width, height, objects, embeddings, keypoints, "
                "descriptors, digest FROM photos"
            ).fetchall()
        ]
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
        folders = self._folder_paths()
        # one list entry per photo and its blobs joined at the end: small per-photo arrays, a few hundred bytes
        # each, left a fragmented heap as large as the catalogue itself once they were concatenated
        ids, paths, sizes, segment_of, objects, embeddings = [], [], [], [], [], []
        q = "SELECT id, folder, name, width, height, objects, embeddings, segment FROM photos ORDER BY id"
        for image_id, folder, name, w, h, o, e, seg in self.db.execute(q):
            ids.append(image_id)
            paths.append(os.path.join(folders[folder], path_from_db(name)))
            sizes.append((w, h))
            segment_of.append(seg or 0)
            if len(e) % size or len(o) != len(e) // size * OBJECT_RECORD.itemsize:
                o, e = b"", b""  # a damaged row (`oesir check` reports it): its objects left out, the rest searchable
            objects.append(o)
            embeddings.append(e)
        sides = np.asarray(sizes, np.int32).reshape(-1, 2)
        counts = np.fromiter((len(e) // size for e in embeddings), np.int64, len(embeddings))
        codes = np.frombuffer(b"".join(embeddings), np.uint8).reshape(-1, size)
        del embeddings
        boxes = b"".join(objects)
        first = np.cumsum(counts) - counts
        return Catalogue(
            image_ids=np.asarray(ids, np.int64),
            paths=paths,
            sizes=sides,
            object_image=np.repeat(np.arange(len(ids), dtype=np.int32), counts),
            object_index=(np.arange(len(codes)) - np.repeat(first, counts)).astype(np.int32),
            object_boxes=unpack_joined_boxes(boxes, np.repeat(sides, counts, axis=0)),
            codes=codes.copy(),
            codec=codec,
            segment_of=np.asarray(segment_of, np.int64),
            segments=[(i, f, lv, b) for i, f, lv, b in self.segments()],
            generation=self.generation,
        )

    # -- local features (postings.py, local_index.py) ------------------------
    def vocabulary(self) -> tuple[Vocabulary, str]:
        """The local-feature vocabulary and its 'file@sha256' tag; refused if the index was coded with another."""
        if self._vocabulary is None:
            try:
                path, digest = verified_file(VOCABULARY_FILE)
            except WeightsError as exc:
                raise StoreError(f"index at {self.dir} needs the local-feature vocabulary: {exc}") from None
            tag, have = f"{VOCABULARY_FILE}@{digest}", self.meta("local_codebook")
            if have is not None and have != tag:
                raise StoreError(
                    f"index at {self.dir} stores local features coded with {have.split('@')[0]} (sha256 "
                    f"{have.split('@')[-1][:12]}...), not with this oesir's; re-index with `oesir index --rebuild`"
                )
            self._vocabulary = (Vocabulary.load(path), tag)
        return self._vocabulary

    def add_local_features(self, db: sqlite3.Connection, items: list[tuple[int, np.ndarray, np.ndarray]]) -> None:
        """Store photos' local features, (photo id, keypoints [N, 4], uint8 descriptors [N, 128]) each, as one
        new segment (call inside `transaction()`: the segment counts only once it commits)."""
        items = [(i, k, d) for i, k, d in items if len(d)]
        if not items:
            return
        vocabulary, tag = self.vocabulary()
        x = as_float(np.concatenate([d for _, _, d in items]))
        words = vocabulary.nearest_words(x)[:, 0]
        image = np.repeat([i for i, _, _ in items], [len(d) for _, _, d in items]).astype(np.int64)
        geometry = pack_geometry(np.concatenate([k for _, k, _ in items]))
        codes = vocabulary.encode(x, words)
        segment = self._write_segment(db, Entries(image, words, codes, vocabulary.norms(words, codes), geometry), level=0)
        db.executemany("UPDATE photos SET segment=? WHERE id=?", [(segment, i) for i, _, _ in items])
        if self.meta("local_codebook") is None:
            self.set_meta("local_codebook", tag)

    def _write_segment(self, db: sqlite3.Connection, entries: Entries | Callable[[Path], int], level: int) -> int:
        """Write a segment file (atomically, fsync'ed) and list it (inside `transaction()`); its id.
        `entries`: what it holds, or a function that writes it at a path and returns its entry count."""
        path = self.dir / f"local-{uuid.uuid4().hex[:16]}{SEGMENT_SUFFIX}"
        count = [len(entries)] if isinstance(entries, Entries) else []

        def write(tmp: Path) -> None:
            if isinstance(entries, Entries):
                write_segment(tmp, entries, self.vocabulary()[0].words)
            else:
                count.append(entries(tmp))

        atomic_write(path, write)
        return db.execute(
            "INSERT INTO segments(file, level, entries, bytes, sha256) VALUES (?,?,?,?,?)",
            (path.name, level, count[0], path.stat().st_size, bytes.fromhex(sha256_file(path))),
        ).lastrowid

    def segments(self) -> list[tuple[int, str, int, int]]:
        """(id, file, level, bytes) of every live segment, oldest first."""
        return [tuple(r) for r in self.db.execute("SELECT id, file, level, bytes FROM segments ORDER BY id")]

    def merge_segments(self) -> int:
        """While a level holds FANOUT segments, merge its oldest FANOUT into one of the next level, keeping only
        the entries of photos still stored there; drop segments no photo uses. With the writer lock held.
        Returns the merges done. Each merge is one transaction: a crash leaves the old segments, or the new one."""
        merges = 0
        self._drop_unused_segments()
        while True:
            levels: dict[int, list[tuple[int, str]]] = {}
            for seg_id, file, level, _ in self.segments():
                levels.setdefault(level, []).append((seg_id, file))
            full = sorted(level for level, group in levels.items() if len(group) >= FANOUT)
            if not full:
                return merges
            group = levels[full[0]][:FANOUT]
            ids = [seg_id for seg_id, _ in group]
            marks = ",".join("?" * len(ids))
            users: dict[int, list[int]] = {seg_id: [] for seg_id in ids}
            for photo, seg_id in self.db.execute(f"SELECT id, segment FROM photos WHERE segment IN ({marks})", ids):
                users[seg_id].append(photo)
            self._verify_segments(ids)  # never fold a damaged segment into a new one with a valid checksum
            sources = [(Segment(self.dir / file), np.array(users[seg_id], np.int64)) for seg_id, file in group]
            with self.transaction(changes_vectors=False) as db:
                new = self._write_segment(db, partial(merge_into, sources=sources), full[0] + 1)
                db.execute(f"UPDATE photos SET segment=? WHERE segment IN ({marks})", [new, *ids])
                db.execute(f"DELETE FROM segments WHERE id IN ({marks})", ids)
            del sources  # unmap before the files go
            for _, file in group:
                (self.dir / file).unlink(missing_ok=True)
            merges += 1

    def _verify_segments(self, ids: list[int]) -> None:
        """StoreError naming the repair when one of these segments is missing or fails its sha256."""
        bad = [file for _, file, _ in self.damaged_segments(ids)]
        if bad:
            raise StoreError(
                f"local-feature segment {self.dir / bad[0]} is missing or damaged; run `oesir check --repair --index {self.dir}`"
            )

    def _drop_unused_segments(self) -> None:
        used = {r[0] for r in self.db.execute("SELECT DISTINCT segment FROM photos WHERE segment IS NOT NULL")}
        unused = [(seg_id, file) for seg_id, file, _, _ in self.segments() if seg_id not in used]
        if unused:
            with self.transaction(changes_vectors=False) as db:
                db.executemany("DELETE FROM segments WHERE id=?", [(seg_id,) for seg_id, _ in unused])
            for _, file in unused:
                (self.dir / file).unlink(missing_ok=True)

    def remove_orphan_segments(self) -> int:
        """Delete segment files no committed row lists (a writer killed between writing one and committing)."""
        listed = {file for _, file, _, _ in self.segments()}
        n = 0
        for path in self.dir.glob(SEGMENT_GLOB):
            if path.name not in listed:
                with contextlib.suppress(OSError):
                    path.unlink()
                    n += 1
        return n

    def damaged_segments(self, ids: list[int] | None = None) -> list[tuple[int, str, str]]:
        """(segment id, file, problem) for each listed segment (of `ids`; None: all) that is missing or whose
        bytes fail its sha256."""
        bad = []
        for seg_id, file, size, sha in self.db.execute("SELECT id, file, bytes, sha256 FROM segments").fetchall():
            if ids is not None and seg_id not in ids:
                continue
            path = self.dir / file
            if not path.exists():
                bad.append((seg_id, file, "missing"))
            elif path.stat().st_size != size or sha256_file(path) != sha.hex():
                bad.append((seg_id, file, "its bytes do not match its checksum"))
        return bad

    def photos_in_segments(self, segment_ids: list[int]) -> list[tuple[int, str]]:
        """(photo id, path) of the photos whose local features are in these segments."""
        folders = self._folder_paths()
        out = []
        for seg_id in segment_ids:
            for i, f, n in self.db.execute("SELECT id, folder, name FROM photos WHERE segment=?", (seg_id,)):
                out.append((i, os.path.join(folders[f], path_from_db(n))))
        return out

    def photos_in_unlisted_segments(self) -> list[tuple[int, str]]:
        """(photo id, path) of photos whose `segment` names no listed segment (damage SQLite cannot see)."""
        folders = self._folder_paths()
        q = "SELECT id, folder, name FROM photos WHERE segment IS NOT NULL AND segment NOT IN (SELECT id FROM segments)"
        return [(i, os.path.join(folders[f], path_from_db(n))) for i, f, n in self.db.execute(q)]

    def local_index(self, catalogue: Catalogue) -> LocalIndex:
        """The catalogue's segments, memory-mapped, as one searchable `LocalIndex`.

        A segment whose file is missing or not the size its row says is damage: StoreError naming the repair.
        """
        mapped = {}
        for seg_id, file, _, size in catalogue.segments:
            path = self.dir / file
            try:
                if path.stat().st_size != size:
                    raise ValueError("size differs")
                mapped[seg_id] = Segment(path)
            except (OSError, ValueError) as exc:
                raise StoreError(
                    f"local-feature segment {path} is missing or damaged ({exc}); run `oesir check --repair --index {self.dir}`"
                ) from None
        vocabulary = self.vocabulary()[0] if mapped else None
        photo_of_id = np.full(int(catalogue.image_ids.max(initial=-1)) + 1, -1, np.int64)
        photo_of_id[catalogue.image_ids] = np.arange(len(catalogue.image_ids))
        return LocalIndex(vocabulary, mapped, photo_of_id, catalogue.segment_of)

    def local_content(self) -> dict[int, bytes]:
        """Photo id -> its live local entries (word, code, norm, geometry; not the id) as sorted bytes:
        equal bytes, equal features."""
        owner = dict(self.db.execute("SELECT id, segment FROM photos WHERE segment IS NOT NULL").fetchall())
        out: dict[int, bytes] = {}
        for seg_id, file, _, _ in self.segments():
            e = Segment(self.dir / file).all_entries()
            fields = [("word", "<i8"), ("code", "u1", (e.code.shape[1],)), ("norm", "u1"), ("g", e.geometry.dtype)]
            rows = np.zeros(len(e), fields)
            rows["word"], rows["code"], rows["norm"], rows["g"] = e.word, e.code, e.norm, e.geometry
            by_image = np.argsort(e.image, kind="stable")
            images, starts = np.unique(e.image[by_image], return_index=True)
            for image, part in zip(images, np.split(rows[by_image], starts[1:])):
                if owner.get(int(image)) == seg_id:
                    out[int(image)] = np.sort(part.view(np.dtype((np.void, part.dtype.itemsize)))).tobytes()
        return out

    def close(self) -> None:
        self.db.close()


# columns `_row_digest` and `_path_of` read, in this order
_ROW_COLUMNS = "id, folder, name, sha256, size, objects, embeddings, keypoints, descriptors, digest"


def _path_of(row: tuple, folders: dict[int, str]) -> str:
    return os.path.join(folders[row[1]], path_from_db(row[2]))


def _row_digest(row: tuple, folders: dict[int, str]) -> bytes:
    """The digest a `_ROW_COLUMNS` row should carry."""
    return row_digest(_path_of(row, folders), row[3].hex(), row[5], row[6], row[7] or b"", row[8] or b"")


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
    segment_of: np.ndarray  # [P] the segment holding each photo's local features (0: none)
    segments: list[tuple[int, str, int, int]]  # (id, file, level, bytes) of the live segments
    generation: int

    @property
    def embeddings(self) -> np.ndarray:
        """Stored embeddings as float32 (for pq: their reconstructions)."""
        return self.codec.decode(self.codes)


_SQLITE_FULL = 13  # sqlite3.SQLITE_FULL, which Python 3.10 lacks


def is_disk_full(exc: BaseException) -> bool:
    """Whether `exc`, as SQLite or the OS raise it, reports a write that failed for lack of space
    (SQLITE_FULL, ENOSPC, EDQUOT). The store's own writes raise `DiskFullError` instead."""
    if isinstance(exc, sqlite3.Error):
        code = getattr(exc, "sqlite_errorcode", None)  # Python >= 3.11
        return code & 0xFF == _SQLITE_FULL if code is not None else "database or disk is full" in str(exc)
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def _disk_full_error(directory: Path, exc: BaseException) -> DiskFullError:
    """The error for a write to the index at `directory` that `exc` says failed for lack of space."""
    detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return DiskFullError(f"cannot write the index at {directory}: disk full ({detail}); the index keeps its last committed state")


@contextlib.contextmanager
def disk_full_as_store_error(directory: Path) -> Iterator[None]:
    """Raise `DiskFullError` for a write to the index at `directory` that fails for lack of space.

    Callers then tell a full disk from damage by type; the SQLite and OS errors differ too much to match on.
    """
    try:
        yield
    except (sqlite3.Error, OSError) as exc:
        if is_disk_full(exc):
            raise _disk_full_error(directory, exc) from exc
        raise


# -- stamps of the derived structures -------------------------------------------
# A structure saved at PATH (an hnswlib graph, a faiss IVF-PQ) has its stamp at PATH.json: what it was built
# from (generation, model version, kind, codec; see graphs.graph_stamp) plus its row count, size and sha256.


def stamp_path(path: Path) -> Path:
    """Where the stamp of the structure saved at `path` lives."""
    return path.with_suffix(path.suffix + ".json")


def write_stamp(path: Path, stamp: dict) -> None:
    """Write a stamp file atomically (its key order is kept: see `graphs.graph_stamp`)."""
    atomic_write_bytes(path, json.dumps(stamp).encode())


def read_stamp(path: Path) -> dict | None:
    """The stamp at `path`; None when it is missing or not a stamp (both mean: rebuild)."""
    try:
        stamp = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return stamp if isinstance(stamp, dict) else None


def save_stamped(path: Path, write: Callable[[Path], None], stamp: dict, count: int) -> None:
    """Save a derived structure (`write` fills a file) then its stamp, each atomically.

    A crash or a full disk in between leaves an old stamp beside new bytes: a mismatch, so it
    is rebuilt, never trusted. Raises `DiskFullError` when the disk is full.
    """
    with disk_full_as_store_error(path.parent):
        atomic_write(path, write)
        full = {**stamp, "count": count, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        write_stamp(stamp_path(path), full)


def grown_from(path: Path, wanted: dict, digest_of: Callable[[int], str]) -> tuple[int, dict] | None:
    """When the data only grew since the structure at `path` was built: (its row count, its stamp's keys of `wanted`).

    That holds when every stamp key but the generation matches `wanted`, the file is
    the size its stamp says, and the stamp's digest of its rows (`rows`) is the digest
    of the data's first that many rows now: no row it holds was removed, moved or
    changed, so adding the new rows brings it up to date without a rebuild. None otherwise.
    """
    saved = read_stamp(stamp_path(path))
    if saved is None or not path.exists():
        return None
    count = saved.get("count")
    if not isinstance(count, int) or count <= 0 or not isinstance(saved.get("rows"), str):
        return None
    if any(saved.get(k) != v for k, v in wanted.items() if k != "generation"):
        return None
    if path.stat().st_size != saved.get("bytes"):
        return None
    try:
        if digest_of(count) != saved["rows"]:
            return None
    except IndexError:  # fewer rows now than it holds
        return None
    return count, {k: saved.get(k) for k in wanted}


def check_stamp(path: Path, wanted: dict, hash_bytes: bool = False) -> tuple[str, dict | None]:
    """Whether the structure saved at `path` may be used for data that `wanted` describes.

    Returns (status, saved stamp): status is 'ok' (the saved stamp is returned), 'missing',
    'stale' (built from other data) or 'damaged' (its bytes are not those its stamp vouches
    for). The size is compared always (cheap, at every open); the sha256 only with
    `hash_bytes` (`oesir check`), as hashing a large graph takes seconds.
    """
    saved = read_stamp(stamp_path(path))
    if saved is None or not path.exists():
        return "missing", None
    if any(saved.get(k) != v for k, v in wanted.items()):
        return "stale", None
    if path.stat().st_size != saved.get("bytes") or (hash_bytes and sha256_file(path) != saved.get("sha256")):
        return "damaged", None
    return "ok", saved
