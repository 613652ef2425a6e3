"""``python -m faults.scenario scenarios/``: run scenario files and print a report (see
:func:`faults.scenario.cli.main` for the arguments and the exit status)."""

import sys

from faults.scenario.cli import main

if __name__ == "__main__":
    sys.exit(main())
