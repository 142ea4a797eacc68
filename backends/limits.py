"""What any setting may be: strict types and upper bounds, shared by every settings model.

A value that passes validation must also run: a seed numpy cannot take, a batch size
written `true` (Python's bool is an int), a timeout `time.sleep` overflows on would
all pass a lax model and fail hours later, inside a run or while writing its results.
So every settings model is strict (booleans are not integers, strings are not
booleans, numbers are not strings; an integer is still a valid float), no float may
be infinite or NaN, and every number has an upper bound its consumers accept.
"""

from __future__ import annotations

from pydantic import ConfigDict

# extra="forbid": a misspelt key is an error, not a silently ignored setting
STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

MAX_COUNT = 1_000_000  # prompts, tokens per prompt, batch sizes, passes: far above any real study
MAX_TOKENS = 2**31 - 1  # engine capacities (context length, tokens per step): the engines' int32
MAX_GPUS = 1024  # tensor/pipeline-parallel sizes, GPUs or CPUs per run
MAX_SEED = 2**32 - 1  # numpy's and torch's seed range starts at 0 and ends here
MAX_BYTES = 2**50  # memory sizes (a KV cache): 1 PiB, far above any machine, inside int64
MAX_SECONDS = 30 * 24 * 3600  # any duration: 30 days, well inside time.sleep's range
