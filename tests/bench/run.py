"""Run the benchmarks and print their tables: ``python -m tests.bench.run [--help]``."""

from __future__ import annotations

import sys

from tests.bench.core import main

if __name__ == "__main__":
    sys.exit(main())
