"""Where an index lives, from `--index` or `$OESIR_INDEX`: a folder (the embedded default) or Milvus.

.oesir, /cases/42.oesir            a folder: SQLite + hnswlib + segment files (store.py)
milvus-lite:/cases/42.db           an embedded Milvus Lite file (milvus_store.py)
milvus://HOST:PORT/NAME            a Milvus server or cluster; NAME prefixes the collections
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreError

DEFAULT_FOLDER = ".oesir"
DEFAULT_NAME = "oesir"  # collection prefix of a milvus-lite: index, or of a milvus:// URI without a name
LITE_PREFIX = "milvus-lite:"
SERVER_PREFIX = "milvus://"
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,200}$")
_SERVER = re.compile(r"^milvus://(?P<host>[^/:]+)(?::(?P<port>\d+))?(?:/(?P<name>[^/]*))?/?$")
DEFAULT_PORT = 19530


@dataclass(frozen=True)
class IndexLocation:
    """A parsed index location: `folder` for the embedded index, else the Milvus `uri` and collection prefix `name`."""

    text: str  # as the user wrote it (what messages show)
    folder: Path | None = None
    uri: str | None = None
    name: str = DEFAULT_NAME

    @property
    def is_milvus(self) -> bool:
        return self.uri is not None


def parse_location(value: str | os.PathLike | None) -> IndexLocation:
    """The location `value` names (default `$OESIR_INDEX`, else ./.oesir); a malformed Milvus one is a StoreError."""
    text = os.fspath(value) if value is not None else os.environ.get("OESIR_INDEX", DEFAULT_FOLDER)
    if text.startswith(LITE_PREFIX):
        path = text[len(LITE_PREFIX) :]
        if not path.endswith(".db"):
            raise StoreError(f"{text}: a Milvus Lite index is a file whose name ends in .db (milvus-lite:PATH.db)")
        return IndexLocation(text, uri=os.path.abspath(path))
    if text.startswith(SERVER_PREFIX):
        m = _SERVER.match(text)
        if m is None:
            raise StoreError(f"{text}: expected milvus://HOST:PORT/NAME")
        name = m.group("name") or DEFAULT_NAME
        if not _NAME.match(name):
            raise StoreError(f"{text}: NAME must be letters, digits and _ (a Milvus collection prefix)")
        return IndexLocation(text, uri=f"http://{m.group('host')}:{m.group('port') or DEFAULT_PORT}", name=name)
    if "://" in text:
        raise StoreError(f"{text}: unknown index location; a folder, milvus-lite:PATH.db or milvus://HOST:PORT/NAME")
    return IndexLocation(text, folder=Path(text))
