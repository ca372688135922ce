"""The C heap keeps freed buffers for the next photo (memory.py): SIFT stops faulting its scale space in again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from oesir_cli.memory import keep_freed_memory

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "photos"
FAULTS = """
import resource, sys
from oesir_cli.imageio import load_rgb
from oesir_cli.keypoints import extract
from oesir_cli.memory import keep_freed_memory
if sys.argv[2] == "keep":
    assert keep_freed_memory()
rgb = load_rgb(sys.argv[1])
extract(rgb)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    extract(rgb)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_kept_freed_memory_spares_the_page_faults_of_each_photo():
    def faults(mode: str) -> float:
        cmd = [sys.executable, "-c", FAULTS, str(EXAMPLES / "astronaut.jpg"), mode]
        run = subprocess.run(cmd, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        return float(run.stdout)

    default, kept = faults("default"), faults("keep")
    assert kept < 0.2 * default, (kept, default)


def test_keep_freed_memory_checks_its_sizes():
    with pytest.raises(ValueError):
        keep_freed_memory(-1)
