"""`oesir index`: walk photos, describe new or changed ones, commit in small batches.

Re-running is incremental: a file whose size and mtime are unchanged is
skipped; when they changed but the sha256 did not, only the record is
refreshed; otherwise it is re-described. Files that disappeared are dropped
unless `keep_missing`. Each batch is one SQLite transaction (its photos' local
features one new segment file, listed in it), so an interrupted run keeps what
it committed and the next run carries on from there.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

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


def index_paths(
    store: Store,
    engine: Engine,
    paths: Iterable[str | os.PathLike],
    keep_missing: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: Callable[[int, int, str], None] | None = None,
    on_error: Callable[[str, str], None] | None = None,
) -> IndexSummary:
    """Bring the index up to date with the photos under `paths` (the caller holds the writer lock)."""
    t0 = time.perf_counter()
    summary = IndexSummary()
    walk_errors: list[tuple[str, str]] = []
    files = sorted({os.path.abspath(p) for p in walk(paths, walk_errors)})
    for path, err in walk_errors:
        summary.failed.append((path, err))
        if on_error:
            on_error(path, err)
    known = store.images()
    pending: list[tuple[ImageRecord, PhotoData | None]] = []

    def flush() -> None:
        if not pending:
            return
        with store.transaction(changes_vectors=any(data is not None for _, data in pending)) as db:
            local = []
            for rec, data in pending:
                if data is None:  # same bytes, new mtime: refresh the record only
                    store.touch(db, rec)
                else:
                    local.append((store.put(db, rec, data), data.keypoints, data.descriptors))
            store.add_local_features(db, local)  # the batch's keypoints: one new segment
        pending.clear()
        store.merge_segments()

    for i, path in enumerate(files):
        if progress:
            progress(i, len(files), path)
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
            pending.append((ImageRecord(old.id, path, digest, st.st_size, st.st_mtime_ns, old.width, old.height), None))
            summary.unchanged += 1
        else:
            try:
                rgb = load_rgb(path, max_pixels=max_pixels)
            except ImageError as exc:
                _fail(summary, on_error, path, str(exc).removeprefix(f"{path}: "))
                continue
            data = engine.describe(rgb)
            h, w = rgb.shape[:2]
            pending.append((ImageRecord(0, path, digest, st.st_size, st.st_mtime_ns, w, h), data))
            if old:
                summary.updated += 1
            else:
                summary.added += 1
        if len(pending) >= BATCH:
            flush()
    flush()
    if progress:
        progress(len(files), len(files), "")
    if not keep_missing:
        present = set(files)
        gone = [p for p in known if p not in present and not os.path.exists(p)]
        if gone:
            with store.transaction() as db:
                store.delete(db, gone)
            summary.removed = len(gone)
            store.merge_segments()
    refresh_graphs(store)
    summary.photos, summary.objects = store.count()
    summary.seconds = time.perf_counter() - t0
    return summary


def _fail(summary: IndexSummary, on_error: Callable[[str, str], None] | None, path: str, err: str) -> None:
    summary.failed.append((path, err))
    if on_error:
        on_error(path, err)
