"""``python -m natgrad``: the same command line as the ``natgrad`` console script."""

import sys

from natgrad.cli import main

sys.exit(main())
