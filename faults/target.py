"""The server the daemon.* sites act on, when it is not a :class:`DaemonProcess` of ours.

An app that talks to a model server it started itself (an ollama on 127.0.0.1:11434, a test
server of its own) names it with ``Target``::

    Injector("daemon.request=1*refuse", daemon=Target("http://127.0.0.1:11434"))
    Injector("daemon.process=@2lost", daemon=Target(url, pid=proc.pid))

Only traffic to the target's address is faulted. ``daemon.process`` faults need the process:
with ``pid`` the target is killed (SIGKILL), paused (SIGSTOP) and resumed (SIGCONT) for real;
``restart`` needs a :class:`~pytest_resilience.backends.daemon.DaemonProcess`, which knows
how to start the server again.
"""

from __future__ import annotations

import contextlib
import os
import signal
from typing import Protocol
from urllib.parse import urlsplit

from pytest_resilience.core.clock import SystemClock

__all__ = ["Server", "Target", "address_of", "same_host"]

_LOOPBACK = {"localhost": "127.0.0.1", "::1": "::1", "[::1]": "::1"}


class Server(Protocol):
    """What the daemon.* sites need of a server: where it listens, and its process."""

    @property
    def host(self) -> str: ...
    @property
    def port(self) -> int | None: ...
    @property
    def paused(self) -> bool: ...

    def kill(self) -> int | None: ...
    def pause(self) -> None: ...
    def resume(self) -> None: ...
    def restart(self) -> object: ...


def same_host(host: str | None) -> str:
    """``host`` as the sites compare it: lower case, ``localhost`` as ``127.0.0.1``."""
    text = (host or "").lower().strip("[]")
    return _LOOPBACK.get(text, text)


def address_of(url: str) -> tuple[str, int]:
    """``(host, port)`` of an ``http(s)://`` URL (the scheme's port when it names none).

    Raises ``ValueError`` naming the URL when it has no scheme or host.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL with a host: {url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return same_host(parts.hostname), port


def _alive(pid: int | None) -> bool:
    """Whether ``pid`` still runs: a zombie (dead, not yet reaped by its parent) does not."""
    if pid is None:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except OSError:  # gone, or no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True


class Target:
    """A server of the app's own at ``url``; ``pid`` is its process, when daemon.process
    faults should act on it. Raises ``ValueError`` for a URL without scheme or host."""

    def __init__(self, url: str, *, pid: int | None = None) -> None:
        self.url = url.rstrip("/")
        self.host, self.port = address_of(url)
        self.pid = pid
        self.paused = False

    @property
    def base_url(self) -> str:
        return self.url

    def _signal(self, signum: int) -> None:
        if self.pid is None:
            raise RuntimeError(
                f"daemon.process needs the server's process: Target({self.url!r}, pid=...)"
            )
        os.kill(self.pid, signum)

    def kill(self) -> int | None:
        """SIGKILL the process and wait (up to two seconds) until it is gone, so that the
        next connection is refused as it would be after a real crash. It is not ours to
        reap: no exit status."""
        with contextlib.suppress(ProcessLookupError):
            self._signal(signal.SIGKILL)
        self.paused = False
        clock = SystemClock()
        until = clock.now() + 2.0  # a SIGKILLed process is gone within milliseconds
        while _alive(self.pid) and clock.now() < until:
            clock.sleep(0.001)
        return None

    def pause(self) -> None:
        self._signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self._signal(signal.SIGCONT)
        self.paused = False

    def restart(self) -> Target:
        raise RuntimeError(
            f"daemon.process=restart needs a DaemonProcess; {self!r} cannot be started again"
        )

    def __repr__(self) -> str:
        return f"<Target {self.url} pid={self.pid}>"
