"""Autoencoder networks, presets, and the :class:`Model` users hold."""

from .autoencoders import ARCHITECTURES, ConvAutoencoder, build_network
from .model import Model, resolve_device
from .presets import PRESETS, Preset, get_preset, resolve_preset

__all__ = [
    "ARCHITECTURES",
    "PRESETS",
    "ConvAutoencoder",
    "Model",
    "Preset",
    "build_network",
    "get_preset",
    "resolve_device",
    "resolve_preset",
]
