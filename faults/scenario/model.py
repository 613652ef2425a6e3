"""What a loaded scenario is: :class:`Target` (what the steps call), :class:`Step` (one
``[[steps]]`` entry, or the steady-state probe) and :class:`Scenario`, frozen dataclasses
the loader builds once the file is checked; and the defaults that loading and running
share: what a failed op raises (:data:`FAILURES`), what a retry or breaker acts on when the
file does not say, and how many parts a job has.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from pytest_resilience.core.errors import ResilienceError

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

    from faults.scenario.reading import Path_
    from faults.spec import Spec


#: What a failed model op raises; anything else is a bug and ends the steps.
FAILURES: Final[tuple[type[Exception], ...]] = (
    ResilienceError,
    OSError,
    TimeoutError,
    MemoryError,
)
_DEFAULT_ON: Final = ("BackendError", "ConnectionError", "TimeoutError")
_PARTS: Final = 3  # a job's parts when [resilience.checkpoint] does not say


@dataclass(frozen=True, slots=True)
class Target:
    """What the steps call (``[target]``)."""

    client: str = "llama"  # llama | daemon | resilient | factory | callable
    model: str = "tiny"
    factory: str | None = None
    max_tokens: int = 32
    timeout: float = 10.0
    policy: str = "raise"
    callable: str | None = None  # "module:function", called by the "call" op
    daemon_url: str | None = None  # the app's own server, for daemon.* faults
    errors: tuple[str, ...] = ()  # more exception names that count as a failed op
    route: str = "hooks"  # hooks | wire: how daemon.* faults reach the scenario's daemon

    @property
    def has_daemon(self) -> bool:
        """The scenario starts a model daemon of its own."""
        return self.client in ("daemon", "resilient")

    @property
    def label(self) -> str:
        """A short name of a callable target (its last attribute): ``answer``."""
        return (self.callable or "").rpartition(":")[2].rpartition(".")[2]


@dataclass(frozen=True, slots=True)
class Step:
    """One ``[[steps]]`` entry (or the steady-state probe); ``line`` is its ``op =`` line."""

    op: str
    prompt: str = "Once upon a time"
    repeat: int = 1
    seconds: float = 0.0
    max_tokens: int | None = None
    resilience: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    line: int = 0
    args: tuple[Any, ...] = ()  # "call": the positional arguments (args, or the prompt)
    kwargs: Mapping[str, Any] = field(default_factory=dict)  # "call": keyword arguments
    #: the resilient client's status() expected after the step (the probe: before the
    #: steps and after them); None: not checked
    status: str | None = None


@dataclass(frozen=True, slots=True)
class Scenario:
    """A loaded, validated scenario (see the :mod:`faults.scenario` docstring for the file).

    ``resilience`` and ``expect`` hold the checked tables as read; ``faults`` is the parsed
    spec; ``source`` the file's text.
    """

    path: Path
    title: str
    seed: int
    clock: str
    target: Target
    faults: Spec
    steps: tuple[Step, ...]
    expect: Mapping[str, Any]
    resilience: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    steady_state: Step | None = None
    version: int = 1
    source: str = field(default="", repr=False)
    #: the line of each table, key and array element of the file (:func:`key_lines`)
    lines: Mapping[Path_, int] = field(default_factory=dict, repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.path.stem
