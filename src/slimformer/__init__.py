"""slimformer: compress a transformer classifier into small, fast, measured engines."""

import os

# Nothing in slimformer may reach a model or dataset hub at run time.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

__version__ = "0.1.0"
