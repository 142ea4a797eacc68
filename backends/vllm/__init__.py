"""The vLLM backend: vLLM's offline engine, continuous batching.

`config.py` is its settings section (imported by every process); `backend.py` is
the adapter (reaches vLLM lazily, so only a run in its image imports it)."""
