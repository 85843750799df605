"""slimtune: fine-tune, merge, export to int4 ONNX and evaluate small language models from one config."""

import os as _os

__version__ = "0.1.0"

# No telemetry. onnxruntime (1.2x+) and onnxruntime-genai otherwise keep a device id and event databases under
# ~/.cache/Microsoft/DeveloperTools and may send telemetry events; set before either is imported, and inherited
# by the processes slimtune starts (evaluation children, the model builder). A user's own setting wins.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
