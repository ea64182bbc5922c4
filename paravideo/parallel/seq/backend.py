"""Which sequence-parallel attention runs: torch collectives anywhere, xfuser (xDiT USP) only on CUDA."""

from __future__ import annotations

import torch

from paravideo.errors import ConfigError


def resolve_backend(requested: str, device: torch.device) -> str:
    """`torch` or `xfuser` for parallel.sp_backend on `device`; never imports xfuser on a CPU rank.

    xfuser imports triton and probes for an accelerator at import, so on a machine without a GPU even
    the import fails: the check comes first and names the field.
    """
    if requested == "xfuser":
        if device.type != "cuda":
            raise ConfigError(f"parallel.sp_backend 'xfuser' needs a CUDA device, but this rank runs on "
                              f"{device.type} (xfuser cannot even be imported without a GPU); use "
                              "parallel.sp_backend: torch or auto")
        raise ConfigError("parallel.sp_backend 'xfuser' is not wired up yet (it needs xfuser's own parallel "
                          "state, and no GPU was available to verify it); use parallel.sp_backend: torch or auto, "
                          "which runs on NCCL as well")
    return "torch"


def check_backend_here(config) -> None:
    """Preflight for ranks started on this machine: the backend parallel.sp_backend asks for can run here."""
    par = config.parallel
    if par.ulysses * par.ring == 1:
        return
    on_gpu = config.model.device != "cpu" and torch.cuda.is_available()
    resolve_backend(par.sp_backend, torch.device("cuda" if on_gpu else "cpu"))
