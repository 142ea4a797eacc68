"""`python -m llenergymeasure.backends`: one run (the image entrypoint and the local runner's process).

Everything sits under the `__main__` guard: engines that start workers with `spawn`
(vLLM's engine core and workers) re-import this module in each child as `__mp_main__`,
and a child must not start a second run.
"""

import sys

from llenergymeasure.backends.harness import faults, parent_watch

if __name__ == "__main__":
    parent_watch.start()  # first: a run must never outlive the local orchestrator
    faults.inject("start")  # TEST HOOK: a no-op unless LLEM_TEST_FAULT is set

    from llenergymeasure.backends.harness.entrypoint import exit_now, main  # imports torch: after the cheap checks

    exit_now(main())
    sys.exit(1)  # not reached
