"""Sequence parallelism inside a stage: a window's tokens split over Ulysses x ring ranks."""
