"""Container side of llem: the shared measurement harness and one adapter per backend.

`python -m llenergymeasure.backends` is the entrypoint of every image and of the local runner.
"""

__version__ = "0.1.0"
