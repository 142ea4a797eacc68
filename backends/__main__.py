import sys

from backends.harness.entrypoint import main

sys.exit(main())
