"""Adaptive-depth backbones with exits. Build them by preset name: `presets.create_model`."""
