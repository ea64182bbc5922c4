"""paravideo: long and high-resolution video generation with diffusion transformers across GPUs."""

__version__ = "0.1.0"
