"""oesir: find the photos a suspect photo was spliced from, and show where it was changed."""

import os

# numpy's OpenBLAS threads busy-wait after each call and take the cores from onnxruntime and SIFT: one
# thread describes a photo a quarter faster (indexing and search multiply only small matrices). Set before
# numpy loads, so it holds for the `oesir` command and its worker processes; an explicit value is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
