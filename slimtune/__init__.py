"""slimtune: fine-tune, merge, export to int4 ONNX and evaluate small language models from one config."""

__version__ = "0.1.0"
