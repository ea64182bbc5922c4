"""Model families by pipeline class: each reads its folders into ModelFactors and loads a rank's share.

A new model family is a small folder under `paravideo/models/` with an object implementing
`ModelFamily`, registered here by the `_class_name` its folders' model_index.json carries.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Protocol

import torch

from paravideo.errors import ModelLoadError
from paravideo.models.factors import ModelFactors

# model_index.json _class_name -> "module:attribute" of the family that runs it.
FAMILIES = {"WanPipeline": "paravideo.models.wan.family:WAN"}


class ModelFamily(Protocol):
    """What the runtime needs from a model family."""

    def inspect(self, root: Path) -> ModelFactors: ...
    def load_stages(self, root: Path, factors: ModelFactors, lo: int, hi: int, *, dtype: torch.dtype,
                    device: torch.device) -> list: ...
    def load_text_encoder(self, root: Path, *, dtype: torch.dtype, device: torch.device): ...
    def load_vae(self, root: Path, *, device: torch.device): ...
    def streaming_decoder(self, vae): ...


def family_for(root: Path) -> ModelFamily:
    """The family that runs the folder `root`, by its model_index.json."""
    index = root / "model_index.json"
    name = None
    if index.is_file():
        try:
            name = json.loads(index.read_text()).get("_class_name")
        except (OSError, json.JSONDecodeError, AttributeError):
            name = None  # the family's own inspection reports the unreadable file
    if name is not None and name not in FAMILIES:
        raise ModelLoadError(f"model.path: model_index.json names the pipeline {name!r}, which paravideo does not run; "
                             f"supported pipelines: {', '.join(FAMILIES)} (text-to-video)")
    module, attr = FAMILIES.get(name, FAMILIES["WanPipeline"]).split(":")
    return getattr(importlib.import_module(module), attr)


def inspect_model(root: Path) -> tuple[ModelFamily, ModelFactors]:
    """The family of `root` and the factors it declares (ModelLoadError for a folder it cannot run exactly)."""
    family = family_for(root)
    return family, family.inspect(root)
