"""The offline cost model and planner, read by `paravideo plan`, `validate` and the bench: model shapes
from config files (no weights), FLOPs, parameter and activation memory, message traffic, a replay of
the static schedule per rank, hardware profiles and their calibration on this machine, a modelled
sequence-parallel baseline and projections. The runtime never imports it."""
