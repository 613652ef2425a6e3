"""The pytest plugin (entry point ``pytest11: resilience``).

pytest imports this module in every run of every user who installs the package, so it
imports nothing heavy at module level: each hook imports what it needs when it runs.
"""

from __future__ import annotations
