"""Workstation side: data, adaptive-depth backbones, training, controller fitting, export (PyTorch)."""
__version__ = "0.1.0"
