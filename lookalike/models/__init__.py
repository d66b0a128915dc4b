"""Autoencoder networks, presets, and the :class:`Model` users hold."""

from .autoencoders import ARCHITECTURES, ConvAutoencoder, build_network
from .model import Model, blas_threads, compute_threads, cpu_supports_bf16, resolve_device, torch_threads
from .presets import PRESETS, Preset, get_preset, resolve_preset

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "ConvAutoencoder",
    "Model",
    "Preset",
    "blas_threads",
    "build_network",
    "compute_threads",
    "cpu_supports_bf16",
    "get_preset",
    "resolve_device",
    "resolve_preset",
    "torch_threads",
]
