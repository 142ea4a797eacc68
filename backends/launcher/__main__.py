"""`python -m llenergymeasure.backends.launcher --fd N`: the local runner's launcher (see __init__.py).

Everything sits under the `__main__` guard, as in backends/__main__.py: this module is
the main module of every run forked from here too, and a worker an engine spawns
re-imports it as `__mp_main__`.
"""

if __name__ == "__main__":
    import sys

    from llenergymeasure.backends.launcher.server import serve_until_forked

    serve_until_forked(sys.argv[1:])  # returns only in a forked child: from here on, it is the run
    from llenergymeasure.backends.harness.run_process import run_this_process

    run_this_process()
