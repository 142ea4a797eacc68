"""`python -m llenergymeasure.backends.tensorrt build`: build one TensorRT-LLM engine
(the engine cache runs it in the run's container or process, never inside a measurement)."""

import sys

from llenergymeasure.backends.tensorrt.backend import main

sys.exit(main(sys.argv))
