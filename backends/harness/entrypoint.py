"""`python -m llenergymeasure.backends`: read the experiment from the environment, run it, write
result.json (or error.json) into the run directory, exit with the outcome.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import traceback
from pathlib import Path

from pydantic import ValidationError

from llenergymeasure.backends import contract
from llenergymeasure.backends.atomic import write_json_atomic
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.secrets import redact
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.backends.harness.protocol import run_experiment
from llenergymeasure.backends.harness.serving import run_serving
from llenergymeasure.backends.harness.result import RunError


class Terminated(BaseException):
    """SIGTERM from the runner (timeout, Ctrl-C on the host, container stop)."""


def _on_sigterm(signum: int, frame: object) -> None:
    raise Terminated("terminated by signal SIGTERM")


def _write_error(run_dir: Path, exc: BaseException, experiment_id: str | None, started: str) -> None:
    err = RunError(
        experiment_id=experiment_id,
        error_type=type(exc).__name__,
        message=redact(str(exc) or type(exc).__name__),
        traceback=redact("".join(traceback.format_exception(exc))),
        started_at=started,
        finished_at=utc_now(),
    )
    try:
        write_json_atomic(run_dir / contract.ERROR_FILE, err.model_dump(mode="json"))
    except OSError as e:  # e.g. the disk is full: the exit code still says it failed
        print(f"llem: could not write {contract.ERROR_FILE}: {e}", file=sys.stderr)


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s"
    )
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = utc_now()
    run_dir = Path(os.environ.get(contract.ENV_RUN_DIR, "."))
    run_dir.mkdir(parents=True, exist_ok=True)

    raw = os.environ.get(contract.ENV_EXPERIMENT)
    try:
        if not raw:
            raise ValueError(f"{contract.ENV_EXPERIMENT} is not set: nothing to run")
        config = ExperimentConfig.model_validate_json(raw)
    except (ValueError, ValidationError) as e:
        _write_error(run_dir, e, None, started)
        print(f"llem: invalid experiment config: {e}", file=sys.stderr)
        return contract.EXIT_BAD_CONFIG

    try:
        # serving: the backend's own server under a load, built on this protocol's pieces
        run = run_serving if config.scenario == "serving" else run_experiment
        result = run(config, run_dir)
        # inside the try: a result that cannot be written (disk full) is a failed run
        write_json_atomic(run_dir / contract.RESULT_FILE, result.model_dump(mode="json"))
    except BaseException as e:  # noqa: BLE001 - every failure must leave error.json
        _write_error(run_dir, e, config.config_hash(), started)
        print(redact("".join(traceback.format_exception(e))), file=sys.stderr, end="")
        return contract.EXIT_FAILED
    m = result.metrics
    print(
        f"llem: done: {m.output_tokens} tokens in {m.duration_s:.2f} s "
        f"({m.output_tokens_per_s:.1f} tok/s)",
        file=sys.stderr,
    )
    return contract.EXIT_OK


def exit_now(code: int) -> None:
    """End the run process as soon as its work is safe on disk.

    Every file a run writes is written atomically and fsynced (backends/atomic.py), so
    once `main` returns only the interpreter's teardown is left: about a second with
    torch and transformers loaded, measuring nothing, paid by every run of a study. Skip
    it, after flushing what the run printed, unless the run left child processes (an
    engine's workers), which the normal exit shuts down."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        import psutil

        children = psutil.Process().children()
    except Exception:  # noqa: BLE001 - cannot tell: exit the normal way
        children = [None]
    if children:
        sys.exit(code)
    os._exit(code)
