"""Upgrade an index from an older on-disk format, in place: 1 -> 2 -> 3, each in one transaction.

Format 1 kept three tables (images, objects with 8-byte REAL boxes and a composite key,
vectors); format 2 packs each photo into one `photos` row and stores folders once, which
took a PQ index of the standard database from 138 to about 62 bytes per object (issue #7).
The embeddings, local features and photo ids are copied unchanged, so the derived graphs
stay valid and the generation does not move. A photo whose format-1 row failed its digest
keeps failing it (its new digest is left empty), so `oesir check` still names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3

import numpy as np

from .schema import SCHEMA, SEGMENTS_TABLE, pack_objects, path_from_db, row_digest, split_path


def format1_digest(path: str, sha256: str, boxes: np.ndarray, embeddings: bytes, keypoints: bytes, descriptors: bytes) -> str:
    """The row digest format 1 stored (blake2b-128 hex)."""
    h = hashlib.blake2b(digest_size=16)
    for part in (os.fsencode(path), sha256.encode(), np.asarray(boxes, np.float32).tobytes(), embeddings, keypoints, descriptors):
        h.update(len(part).to_bytes(8, "little"))
        h.update(part)
    return h.hexdigest()


def upgrade_format1(db: sqlite3.Connection, transaction: contextlib.AbstractContextManager) -> int:
    """Rewrite the format-1 index open on `db` as format 2 (the caller holds the writer lock). Returns the photos kept.

    `transaction` is the store's write transaction, not yet entered, that leaves the generation as it is
    (`Store.transaction(changes_vectors=False)`): the whole rewrite is one transaction, and the graphs stay current.
    Photos whose vectors row is missing (never completed) are left out: the next `oesir index` adds them again.
    """
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "images" not in tables:
        return 0  # another process upgraded it while we waited for the lock
    has_digest = "digest" in {r[1] for r in db.execute("PRAGMA table_info(vectors)")}
    digest_col = "v.digest" if has_digest else "NULL"
    kept = 0
    with transaction:
        for statement in SCHEMA:
            db.execute(statement)
        folders: dict[str | bytes, int] = {}
        rows = db.execute(
            "SELECT i.id, i.path, i.sha256, i.size, i.mtime_ns, i.width, i.height, i.indexed_at, "
            f"v.embeddings, v.keypoints, v.descriptors, {digest_col} FROM images i JOIN vectors v ON v.image_id = i.id "
            "ORDER BY i.id"
        ).fetchall()
        for image_id, raw_path, sha, size, mtime, w, h, indexed_at, emb, kp, desc, old_digest in rows:
            path = path_from_db(raw_path)
            objs = db.execute(
                "SELECT x1, y1, x2, y2, score, class FROM objects WHERE image_id=? ORDER BY idx", (image_id,)
            ).fetchall()
            table = np.asarray(objs, np.float64).reshape(-1, 6)
            intact = old_digest is None or old_digest == format1_digest(path, sha, table[:, :4], emb, kp, desc)
            folder, name = split_path(path)
            if folder not in folders:
                folders[folder] = db.execute("INSERT INTO folders(path) VALUES (?)", (folder,)).lastrowid
            objects = pack_objects(table[:, :4], table[:, 4], table[:, 5].astype(np.int64), w, h)
            db.execute(
                "INSERT INTO photos(id, folder, name, sha256, size, mtime_ns, width, height, indexed_at, objects, "
                "embeddings, keypoints, descriptors, digest) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    image_id, folders[folder], name, bytes.fromhex(sha), size, mtime, w, h, int(indexed_at), objects,
                    emb, kp or None, desc or None, row_digest(path, sha, objects, emb, kp, desc) if intact else b"",
                ),
            )  # fmt: skip
            kept += 1
        for table_name in ("vectors", "objects", "images"):
            db.execute(f"DROP TABLE {table_name}")
        db.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('format', '2')")
    # the old tables' pages back to the file system; without room for VACUUM's copy the
    # upgrade is still committed and the file just stays larger
    with contextlib.suppress(sqlite3.OperationalError):
        db.execute("VACUUM")
    return kept


def upgrade_format2(store) -> int:  # noqa: ANN001 - a store.Store (importing it here would be a cycle)
    """Rewrite the format-2 index open in `store` as format 3, in one transaction (the caller holds the writer lock).

    Format 2 kept each photo's RootSIFT keypoints and descriptors in its row and searched them through an
    hnswlib graph (`local.hnsw`, ~475 KB per photo); format 3 codes them with the shipped vocabulary into
    segments (postings.py, ~26 bytes per keypoint). Nothing is re-extracted: the stored descriptors are coded
    as they are, so the upgraded index equals one built from scratch. Returns the photos converted.
    """
    db = store.db
    folders = {i: path_from_db(p) for i, p in db.execute("SELECT id, path FROM folders")}
    converted = 0
    with store.transaction(changes_vectors=False) as tx:
        if "segment" not in {r[1] for r in tx.execute("PRAGMA table_info(photos)")}:
            tx.execute("ALTER TABLE photos ADD COLUMN segment INTEGER")
        tx.execute(SEGMENTS_TABLE)
        ids = [r[0] for r in tx.execute("SELECT id FROM photos WHERE descriptors IS NOT NULL ORDER BY id")]
        for lo in range(0, len(ids), _UPGRADE_BATCH):
            chunk = ids[lo : lo + _UPGRADE_BATCH]
            marks = ",".join("?" * len(chunk))
            rows = tx.execute(
                f"SELECT id, folder, name, sha256, objects, embeddings, keypoints, descriptors, digest FROM photos "
                f"WHERE id IN ({marks}) ORDER BY id",
                chunk,
            ).fetchall()
            items, updates = [], []
            for image_id, folder, name, sha, objects, emb, kp, desc, digest in rows:
                path = os.path.join(folders[folder], path_from_db(name))
                intact = digest == row_digest(path, sha.hex(), objects, emb, kp or b"", desc or b"")
                items.append(
                    (
                        image_id,
                        np.frombuffer(kp or b"", np.float32).reshape(-1, 4),
                        np.frombuffer(desc, np.uint8).reshape(-1, 128),
                    )
                )
                updates.append((row_digest(path, sha.hex(), objects, emb, b"", b"") if intact else b"", image_id))
            store.add_local_features(tx, items)
            tx.executemany("UPDATE photos SET keypoints=NULL, descriptors=NULL, digest=? WHERE id=?", updates)
            converted += len(rows)
        tx.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('format', '3')")
    with contextlib.suppress(sqlite3.OperationalError):
        db.execute("VACUUM")
    return converted


_UPGRADE_BATCH = 256
