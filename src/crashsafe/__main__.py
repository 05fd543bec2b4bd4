"""``python -m crashsafe``: the command line."""

import sys

from crashsafe.cli import main

sys.exit(main())
