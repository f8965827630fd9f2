"""Device side of the runtime: numpy and ONNX Runtime only, never torch."""
__version__ = "0.1.0"
