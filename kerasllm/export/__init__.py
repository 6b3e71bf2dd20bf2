"""Model files and the formats a model leaves in: `saving` (the run's `model.keras`, loading in Keras safe mode, the
checks that a model fits its run), `formats` (keras, h5, SavedModel, TFLite, ONNX: each export checked against its
source), `measure` (size, output agreement, latency and calibration batches, which compressed copies are measured by
too) and `guide` (the README written beside an export, with a snippet that runs the file outside kerasllm).
The trainer saves through `saving`, so this wing stands below `kerasllm.train`.
"""
