"""`python -m backend serve --host H --port P`: the same as the `dashboard` console script."""

import sys

from .cli import main

sys.exit(main())
