"""`python -m llenergymeasure.backends`: one run (the image entrypoint and the local runner's process).

Everything sits under the `__main__` guard: engines that start workers with `spawn`
(vLLM's engine core and workers) re-import this module in each child as `__mp_main__`,
and a child must not start a second run. The run itself is `run_this_process`, which a
child forked from the local runner's launcher (backends/launcher/) runs too.
"""

if __name__ == "__main__":
    from llenergymeasure.backends.harness.run_process import run_this_process

    run_this_process()
