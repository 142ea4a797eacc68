"""transformers' own OpenAI-compatible server (`transformers serve --continuous-batching`),
as the backend table describes it for the PyTorch backend's serving scenario. How it is
started and spoken to is serve.py, imported by the run only."""

from __future__ import annotations

from typing import Any

from llenergymeasure.backends.serving.spec import ServerSpec

MODULE = "transformers.cli.transformers"


def problem(config: Any) -> str | None:
    if config.pytorch.batch_size != 1:
        return ("pytorch.batch_size: transformers serve batches continuously and takes no batch size; remove it "
                "and cap the requests in flight with serving.max_concurrency")
    return None


SERVER = ServerSpec(name=f"transformers serve --continuous-batching (python -m {MODULE})",
                    launcher="llenergymeasure.backends.pytorch.serve", problem=problem)
