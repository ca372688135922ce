"""The reproducibility block of a report: what was run, on what, with which models, when, where."""

from __future__ import annotations

import os
import platform
import shlex
import sys
from dataclasses import asdict, dataclass
from datetime import datetime, timezone

from .. import api
from ..location import parse_location
from ..registry import files_used
from ..search import Searcher


@dataclass(frozen=True)
class Reproducibility:
    """Enough to re-run a report and to show nothing was swapped in between."""

    oesir_version: str
    model_version: str  # the engine version the index was built with
    models: tuple[tuple[str, str], ...]  # (file, sha256) of every weights file this run loaded
    index: str  # absolute location
    photos: int
    generation: int
    index_format: str
    codec: str
    command: str
    working_folder: str
    utc_time: str
    machine: str
    python: str

    def as_dict(self) -> dict:
        out = asdict(self)
        out["models"] = [{"file": f, "sha256": d} for f, d in self.models]
        return out


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed, the program named by its base name, quoted for a POSIX shell."""
    argv = list(sys.argv if argv is None else argv)
    if argv:
        argv[0] = os.path.basename(argv[0])
    return shlex.join(argv)


def reproducibility(searcher: Searcher, command: str | None) -> Reproducibility:
    """The block for a report written now; call it after the last search so every model loaded is listed."""
    store = searcher.store
    where = parse_location(store.location)
    return Reproducibility(
        oesir_version=api.version(),
        model_version=searcher.engine.version,
        models=tuple((p.name, d) for p, d in files_used().items()),
        index=str(where.folder.resolve()) if where.folder is not None else where.text,
        photos=searcher.photos.count,
        generation=store.generation,
        index_format=str(store.meta("format", "milvus" if where.is_milvus else "?")),
        codec=str(store.meta("codec", "float32")),
        command=command if command is not None else command_line(),
        working_folder=os.getcwd(),
        utc_time=datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z"),
        machine=f"{platform.node()} ({platform.system()} {platform.release()}, {platform.machine()})",
        python=platform.python_version(),
    )
