"""Patch parallelism: a block's frames cut into bands of token rows, one band per rank of a stage."""
