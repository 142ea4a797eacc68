"""The host <-> run contract: environment variables, file names, exit codes.

Both the orchestrator and the harness import these names, so the two sides can
never drift apart. Bump SCHEMA_VERSION whenever result.json changes shape.
"""

SCHEMA_VERSION = 2  # 2: tpot_ms_* and e2e_ms_*; TTFT counts from a request's arrival

# Inputs to a run (environment variables set by the runner).
ENV_EXPERIMENT = "LLEM_EXPERIMENT_JSON"  # the experiment config, canonical JSON
ENV_RUN_DIR = "LLEM_RUN_DIR"  # where the run writes its files
ENV_RUN_ID = "LLEM_RUN_ID"  # the run's id in its study (e.g. e02-c1); the run dir's name on the host
ENV_CACHE_DIR = "LLEM_CACHE_DIR"  # built-in models (default ~/.cache/llenergymeasure)
ENV_DATA_DIR = "LLEM_DATA_DIR"  # fetched datasets (default <cache>/datasets)
ENV_TOOL_COMMIT = "LLEM_TOOL_COMMIT"  # git commit of the tool, when the run can't see .git
ENV_DEVICE = "LLEM_DEVICE"  # the device as seen inside the run, when a runner remaps GPUs
ENV_IMAGE_ID = "LLEM_IMAGE_ID"  # image the run executes in (set by the Docker runner)
ENV_IMAGE_REF = "LLEM_IMAGE_REF"
ENV_IMAGE_DIGESTS = "LLEM_IMAGE_DIGESTS"  # comma-separated repo digests, if any
ENV_IMAGE_BASE = "LLEM_IMAGE_BASE"  # the base image it was built from
ENV_BASELINE = "LLEM_BASELINE_JSON"  # an idle baseline from an earlier run of the study
ENV_TRT_ENGINE_DIR = "LLEM_TRT_ENGINE_DIR"  # prebuilt TensorRT-LLM engine a run loads
ENV_TRT_ENGINE_OUT = "LLEM_TRT_ENGINE_OUT"  # where an engine build writes its files
ENV_PARENT_PID = "LLEM_PARENT_PID"  # the local runner's pid: a run outliving it stops itself
ENV_TEST_FAULT = "LLEM_TEST_FAULT"  # TEST HOOK only (backends/harness/faults.py); never set by llem
# TEST HOOK only: a fake powercap tree (tests/support/fakes.py) for runs in their own processes,
# on machines without RAPL; never set by llem (backends/harness/energy.py select_cpu_meter)
ENV_TEST_POWERCAP_ROOT = "LLEM_TEST_POWERCAP_ROOT"

# Secrets: passed to runs through the environment only, never written anywhere.
SECRET_ENV_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")

# Outputs of a run (inside its run directory).
RESULT_FILE = "result.json"
ERROR_FILE = "error.json"
TIMESERIES_FILE = "timeseries.parquet"
REQUESTS_FILE = "requests.parquet"  # one row per request of the measured window (harness/result.py)
LOG_FILE = "run.log"
HEARTBEAT_FILE = "heartbeat"  # touched as the run makes progress (the host's no-progress watchdog reads it)

# Exit codes of `python -m llenergymeasure.backends`.
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2
