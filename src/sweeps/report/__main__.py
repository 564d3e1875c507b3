"""``python -m sweeps.report``: the package runs its command line."""

import sys

from sweeps.report.cli import main

sys.exit(main())
