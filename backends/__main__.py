"""`python -m llenergymeasure.backends`: one run (the image entrypoint and the local runner's process)."""

import sys

from llenergymeasure.backends.harness import faults, parent_watch

parent_watch.start()  # first: a run must never outlive the local orchestrator
faults.inject("start")  # TEST HOOK: a no-op unless LLEM_TEST_FAULT is set

from llenergymeasure.backends.harness.entrypoint import exit_now, main  # noqa: E402  (imports torch: after the cheap checks)

exit_now(main())
sys.exit(1)  # not reached
