"""`oesir check`: is the index intact, and what does the damage affect?

The source of truth is SQLite; each photo's row carries a digest of what is
stored for it, so damage is traced to photos. The photos' local features live
in segment files (postings.py) that SQLite lists with their size and sha256:
a segment that is missing or fails its sha256 is damage to every photo whose
features it holds. The object structure (an hnswlib graph, or faiss IVF-PQ;
large indexes only, see graphs.py) is derived: its stamp holds the generation
it was built from and its sha256. An altered structure (bytes its stamp does
not vouch for) is damage; a missing or stale one is only a note, since the
next search or index rebuilds it, as after Ctrl-C during `oesir index`. With
`repair`, damaged photos are dropped (their rows, and damaged segments' files;
`oesir index PATHS` describes them again) and the structure is rebuilt from
the stored embeddings. A database SQLite itself cannot read is reported; only
`oesir index --rebuild` (which moves it aside) recovers from that.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from .errors import StoreError
from .graphs import graph_statuses, refresh_graphs
from .store import DB_NAME, Store, writer_lock

# graph statuses that leave the index usable: a missing or stale graph is rebuilt by the next search or index
USABLE_GRAPH = ("ok", "rebuilt", "missing", "stale")


@dataclass
class CheckReport:
    """What `check` found (and fixed)."""

    index: str
    photos: int = 0
    database: str = "ok"  # ok | damaged: ... | cannot open: ...
    damaged_photos: list[tuple[str, str]] = field(default_factory=list)
    damaged_segments: list[tuple[str, str]] = field(default_factory=list)  # (file, problem)
    graphs: dict[str, str] = field(default_factory=dict)
    repaired: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # not damage: what an interrupted write left behind

    @property
    def ok(self) -> bool:
        """True when the index is usable as it is now (after any repair)."""
        return (
            self.database == "ok"
            and not self.damaged_photos
            and not self.damaged_segments
            and all(v in USABLE_GRAPH for v in self.graphs.values())
        )

    @property
    def notes(self) -> list[str]:
        """What is not damage but worth saying: derived graphs the next search or index will rebuild."""
        why = {"missing": "is missing", "stale": "is out of date"}
        return [
            f"{name} {why[status]}; it is derived, and the next `oesir search` or `oesir index` rebuilds it"
            for name, status in self.graphs.items()
            if status in why
        ] + self.leftovers

    def as_dict(self) -> dict:
        return {
            "index": self.index,
            "ok": self.ok,
            "photos": self.photos,
            "database": self.database,
            "damaged_photos": [{"path": p, "problem": why} for p, why in self.damaged_photos],
            "damaged_segments": [{"file": f, "problem": why} for f, why in self.damaged_segments],
            "graphs": self.graphs,
            "notes": self.notes,
            "repaired": self.repaired,
        }

    def advice(self) -> str | None:
        """The one command that recovers, when something is still wrong."""
        if self.database != "ok":
            return "the database is damaged: run `oesir index --rebuild PATHS` (it moves the damaged file aside)"
        if self.damaged_photos:
            return "run `oesir check --repair`, then `oesir index PATHS` to re-describe the affected photos"
        if self.damaged_segments:
            return "run `oesir check --repair` to remove the damaged local-feature segments"
        if not self.ok:
            return "run `oesir check --repair` to rebuild the derived graphs"
        return None


def check_index(directory: Path, repair: bool = False) -> CheckReport:
    """Check the index at `directory`; with `repair`, drop damaged photos (rows, damaged segments) and rebuild the object
    structure (takes the writer lock)."""
    report = CheckReport(index=str(directory))
    try:
        store = Store(directory)
    except StoreError as exc:
        if not (Path(directory) / DB_NAME).exists():
            raise
        report.database = f"cannot open: {exc}"
        return report
    try:
        if repair:
            with writer_lock(store.dir):
                store.prepare_for_writing()
                _repair(store, report, _inspect(store, report))
        else:
            _inspect(store, report)
    finally:
        store.close()
    return report


@dataclass(frozen=True)
class _Damage:
    """What `_inspect` found, by id, for `_repair` (hashing every segment again would cost as much as the check)."""

    photos: list[int] = field(default_factory=list)
    segments: list[tuple[int, str]] = field(default_factory=list)  # (segment id, file)


def _inspect(store: Store, report: CheckReport) -> _Damage:
    try:
        problems = [r[0] for r in store.db.execute("PRAGMA quick_check(5)").fetchall()]
        if problems != ["ok"]:
            report.database = "damaged: " + "; ".join(problems)
            return _Damage()
        report.photos = store.count()[0]
        bad = store.damaged_rows()
        segments = store.damaged_segments()
        seen = {image_id for image_id, _, _ in bad}
        for seg_id, file, _ in segments:  # a damaged segment damages every photo whose local features it holds
            for image_id, path in store.photos_in_segments([seg_id]):
                if image_id not in seen:
                    seen.add(image_id)
                    bad.append((image_id, path, f"its local features (segment {file}) are missing or damaged"))
        for image_id, path in store.photos_in_unlisted_segments():
            if image_id not in seen:
                seen.add(image_id)
                bad.append((image_id, path, "its local features are in a segment the index does not list"))
    except sqlite3.DatabaseError as exc:
        report.database = f"damaged: {exc}"
        return _Damage()
    report.damaged_photos = [(path, why) for _, path, why in bad]
    report.damaged_segments = [(file, why) for _, file, why in segments]
    _inspect_graphs(store, report)
    return _Damage([image_id for image_id, _, _ in bad], [(seg_id, file) for seg_id, file, _ in segments])


def _inspect_graphs(store: Store, report: CheckReport) -> None:
    report.graphs.update(graph_statuses(store, store.load_all()))


def _repair(store: Store, report: CheckReport, damage: _Damage) -> None:
    if report.database != "ok":
        return  # nothing here can be trusted; `index --rebuild` is the way
    if damage.photos or damage.segments:
        with store.transaction() as db:
            store.delete_ids(db, damage.photos)
            db.executemany("DELETE FROM segments WHERE id=?", [(seg_id,) for seg_id, _ in damage.segments])
        for _, file in damage.segments:
            (store.dir / file).unlink(missing_ok=True)
        store.merge_segments()
        if damage.photos:
            report.repaired.append(f"dropped {len(damage.photos)} damaged photo(s); re-index them with `oesir index PATHS`")
        if damage.segments:
            report.repaired.append(f"removed {len(damage.segments)} damaged local-feature segment(s)")
        report.damaged_photos = []
        report.damaged_segments = []
        report.photos = store.count()[0]
        _inspect_graphs(store, report)  # the generation moved on: the graphs are stale now
    before = dict(report.graphs)
    if any(v != "ok" for v in before.values()):
        for name, status in before.items():
            if status != "ok":
                (store.dir / name).unlink(missing_ok=True)
        refresh_graphs(store)
        _inspect_graphs(store, report)
        report.graphs = {n: ("rebuilt" if before[n] != "ok" and v == "ok" else v) for n, v in report.graphs.items()}
        report.repaired.append("rebuilt the derived graphs from the stored vectors")
