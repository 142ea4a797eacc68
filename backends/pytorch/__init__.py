"""The PyTorch backend: transformers `generate` over static batches.

`config.py` is its settings section (imported by every process); `backend.py` is
the adapter (imports torch and transformers, so only a run imports it)."""
