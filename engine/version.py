"""The engine's version: one place, read by the package, model files and ONNX exports
(pyproject.toml holds the same number for the installer)."""
__version__ = "0.1.0"
