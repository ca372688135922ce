"""`oesir index`: walk photos, describe new or changed ones, commit in small batches.

Re-running is incremental: a file whose size and mtime are unchanged is
skipped; when they changed but the sha256 did not, only the record is
refreshed; otherwise it is re-described. Files that disappeared are dropped
unless `keep_missing`. Each batch is committed whole (in the SQLite store one
transaction, its photos' local features one new segment file listed in it; in
Milvus, rows written before the photo rows that make them visible), so an
interrupted run keeps what it committed and the next run carries on from there.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

from .engine import Engine
from .graphs import refresh_graphs
from .imageio import DEFAULT_MAX_PIXELS, ImageError, is_image_path, load_rgb
from .registry import sha256_file
from .store import ImageRecord, PhotoData, Store

BATCH = 16


@dataclass
class IndexSummary:
    """What one `index` run did."""

    added: int = 0
    updated: int = 0
    unchanged: int = 0
    removed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    objects: int = 0
    photos: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        return (
            f"indexed: {self.added} added, {self.updated} updated, {self.unchanged} unchanged, "
            f"{self.removed} removed, {len(self.failed)} failed; {self.photos} photos, "
            f"{self.objects} objects in index; {self.seconds:.1f} s"
        )

    def as_dict(self) -> dict:
        return {
            "added": self.added,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "removed": self.removed,
            "failed": [{"path": p, "error": e} for p, e in self.failed],
            "photos": self.photos,
            "objects": self.objects,
            "seconds": round(self.seconds, 3),
        }


def walk(paths: Iterable[str | os.PathLike], errors: list[tuple[str, str]]) -> Iterator[Path]:
    """Image files under `paths` (folders recursively, symlink loops cut), sorted per folder."""
    seen_dirs: set[tuple[int, int]] = set()
    for raw in paths:
        p = Path(raw)
        try:
            st = p.stat()
        except OSError as exc:
            errors.append((str(p), f"cannot access ({exc.strerror or exc})"))
            continue
        if stat.S_ISDIR(st.st_mode):
            yield from _walk_dir(p, seen_dirs, errors)
        else:
            yield p


def _walk_dir(root: Path, seen: set[tuple[int, int]], errors: list[tuple[str, str]]) -> Iterator[Path]:
    try:
        st = root.stat()
    except OSError as exc:
        errors.append((str(root), f"cannot access ({exc.strerror or exc})"))
        return
    key = (st.st_dev, st.st_ino)
    if key in seen:
        return
    seen.add(key)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        errors.append((str(root), f"cannot list folder ({exc.strerror or exc})"))
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=True):
                yield from _walk_dir(path, seen, errors)
            elif is_image_path(path):
                yield path
        except OSError as exc:
            errors.append((str(path), f"cannot access ({exc.strerror or exc})"))


class IndexWriter(Protocol):
    """Where `index_paths` commits what it describes: the SQLite store (`StoreWriter`) or Milvus (`milvus_store`).

    `commit` makes a batch visible all at once or not at all; `finish` runs
    what follows the last batch (the SQLite store refreshes its object graph).
    """

    def images(self) -> dict[str, ImageRecord]: ...
    def commit(self, batch: list[tuple[ImageRecord, PhotoData | None]]) -> None: ...
    def delete(self, paths: list[str]) -> None: ...
    def finish(self) -> None: ...
    def count(self) -> tuple[int, int]: ...


class StoreWriter:
    """`IndexWriter` over the SQLite store: a batch is one transaction, its local features one new segment."""

    def __init__(self, store: Store):
        self.store = store

    def images(self) -> dict[str, ImageRecord]:
        return self.store.images()

    def commit(self, batch: list[tuple[ImageRecord, PhotoData | None]]) -> None:
        store = self.store
        with store.transaction(changes_vectors=any(data is not None for _, data in batch)) as db:
            local = []
            for rec, data in batch:
                if data is None:  # same bytes, new mtime: refresh the record only
                    store.touch(db, rec)
                else:
                    local.append((store.put(db, rec, data), data.keypoints, data.descriptors))
            store.add_local_features(db, local)  # the batch's keypoints: one new segment
        store.merge_segments()

    def delete(self, paths: list[str]) -> None:
        with self.store.transaction() as db:
            self.store.delete(db, paths)
        self.store.merge_segments()

    def finish(self) -> None:
        refresh_graphs(self.store)

    def count(self) -> tuple[int, int]:
        return self.store.count()


@dataclass(frozen=True)
class Described:
    """One photo after extraction: its new record and what it stores, or why it could not be read."""

    record: ImageRecord
    data: PhotoData | None
    error: str | None = None


Describer = Callable[[list[ImageRecord]], Iterator[Described]]


def local_describer(engine: Engine, max_pixels: int = DEFAULT_MAX_PIXELS) -> Describer:
    """Describe photos one after the other in this process (the default; `cluster.ray_describer` spreads them)."""

    def run(records: list[ImageRecord]) -> Iterator[Described]:
        for rec in records:
            yield describe_file(engine, rec, max_pixels)

    return run


def describe_file(engine: Engine, rec: ImageRecord, max_pixels: int) -> Described:
    """Decode and describe the photo of `rec` (its width and height filled in); a bad file gives its error."""
    try:
        rgb = load_rgb(rec.path, max_pixels=max_pixels)
    except ImageError as exc:
        return Described(rec, None, str(exc).removeprefix(f"{rec.path}: "))
    h, w = rgb.shape[:2]
    return Described(replace(rec, width=w, height=h), engine.describe(rgb))


def index_paths(
    writer: IndexWriter,
    describe: Describer,
    paths: Iterable[str | os.PathLike],
    keep_missing: bool = False,
    progress: Callable[[int, int, str], None] | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> IndexSummary:
    """Bring the index up to date with the photos under `paths` (the caller holds the writer lock).

    Three stages: plan (stat and hash each file, against what is indexed),
    describe (`describe`: here or on a cluster, in any order), commit (batches
    of BATCH photos, each visible whole or not at all).
    """
    t0 = time.perf_counter()
    summary = IndexSummary()
    walk_errors: list[tuple[str, str]] = []
    files = sorted({os.path.abspath(p) for p in walk(paths, walk_errors)})
    for path, err in walk_errors:
        _fail(summary, on_error, path, err)
    known = writer.images()
    touched, changed = _plan(files, known, summary, on_error)
    for lo in range(0, len(touched), BATCH):
        writer.commit([(rec, None) for rec in touched[lo : lo + BATCH]])
    pending: list[tuple[ImageRecord, PhotoData | None]] = []
    for i, done in enumerate(describe(changed)):
        if progress:
            progress(i, len(changed), done.record.path)
        if done.data is None:
            _fail(summary, on_error, done.record.path, done.error or "cannot describe")
            continue
        if done.record.path in known:
            summary.updated += 1
        else:
            summary.added += 1
        pending.append((done.record, done.data))
        if len(pending) >= BATCH:
            writer.commit(pending)
            pending = []
    if pending:
        writer.commit(pending)
    if progress:
        progress(len(changed), len(changed), "")
    if not keep_missing:
        present = set(files)
        gone = [p for p in known if p not in present and not os.path.exists(p)]
        if gone:
            writer.delete(gone)
            summary.removed = len(gone)
    writer.finish()
    summary.photos, summary.objects = writer.count()
    summary.seconds = time.perf_counter() - t0
    return summary


def _plan(
    files: list[str], known: dict[str, ImageRecord], summary: IndexSummary, on_error: Callable[[str, str], None] | None
) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(records to refresh only: same bytes, new size or mtime; records to describe: new or changed bytes)."""
    touched, changed = [], []
    for path in files:
        try:
            st = os.stat(path)
        except OSError as exc:
            _fail(summary, on_error, path, f"cannot access ({exc.strerror or exc})")
            continue
        old = known.get(path)
        if old and old.size == st.st_size and old.mtime_ns == st.st_mtime_ns:
            summary.unchanged += 1
            continue
        try:
            digest = sha256_file(Path(path))
        except OSError as exc:
            _fail(summary, on_error, path, f"cannot read ({exc.strerror or exc})")
            continue
        if old and old.sha256 == digest:
            touched.append(ImageRecord(old.id, path, digest, st.st_size, st.st_mtime_ns, old.width, old.height))
            summary.unchanged += 1
        else:
            changed.append(ImageRecord(0, path, digest, st.st_size, st.st_mtime_ns, 0, 0))
    return touched, changed


def _fail(summary: IndexSummary, on_error: Callable[[str, str], None] | None, path: str, err: str) -> None:
    summary.failed.append((path, err))
    if on_error:
        on_error(path, err)
