"""`python -m llenergymeasure.backends.tensorrt build`: build one TensorRT-LLM engine
(the engine cache runs it in the run's container or process, never inside a measurement)."""

import sys

from llenergymeasure.backends.tensorrt.backend import main

if __name__ == "__main__":  # spawned workers re-import this module
    sys.exit(main(sys.argv))
