"""`oesir distill`: train the student branch on the detector's features (torch, the `[train]` extra) and export it.

model.py    the student networks S1, S2, S3 (torch)
data.py     training crops and the cached detector / teacher outputs for them (onnxruntime)
train.py    the training loop: MSE to the teacher's maps, checkpoints, resume
export.py   the student to ONNX, merged with the detector into one single-pass graph
"""
