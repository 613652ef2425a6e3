"""The model daemon: llama-cpp-python's OpenAI-compatible server as a child process, and a
client for any OpenAI-compatible server. :class:`DaemonProcess` (:mod:`.process`) owns the
server, launched as :class:`ServerOptions` (:mod:`.launch`) say; :class:`DaemonBackend`
(:mod:`.client`) talks to it over httpx, with its streams in :mod:`.streams`, its time
budget in :mod:`.budget` and the wire format (server-sent events, answers, error statuses)
in :mod:`.wire`. httpx and llama_cpp are imported when first needed, never when this package
is imported.
"""

from __future__ import annotations

from .budget import Timeouts
from .client import DaemonBackend
from .launch import ServerOptions
from .process import DaemonProcess, DaemonStartFailed
from .streams import AsyncDaemonStream, DaemonStream
from .wire import RequestRejected

__all__ = [
    "AsyncDaemonStream",
    "DaemonBackend",
    "DaemonProcess",
    "DaemonStartFailed",
    "DaemonStream",
    "RequestRejected",
    "ServerOptions",
    "Timeouts",
]
