"""The byte pump, the second layer of the proxy: ``_Pump`` passes what is read through the
active toxics into a direction's queue (limits cut it, timings give each chunk a release
time, and a chunk never overtakes the one before), sends what is due and counts it, holds
data back behind a gate while an answer is stalled, ends a flow once what it has was sent,
and keeps each toxic's per-connection state and the journal event of its first act."""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any, Literal

from faults.proxy.base import _ProxyBase
from faults.proxy.toxics import Direction, _Limit, _Timing

if TYPE_CHECKING:
    from faults.proxy.state import _Active, _Conn, _Flow


_SITES: dict[Direction, str] = {"upstream": "daemon.request", "downstream": "daemon.stream"}


class _Pump(_ProxyBase):
    """Bytes through the toxics into a direction's queue, and out when they are due."""

    def _enqueue(self, conn: _Conn, flow: _Flow, data: bytes, now: float) -> None:
        """Pass ``data`` through the toxics into ``flow``'s queue."""
        if flow.ending is not None or not data:  # cut by a limit: the rest is dropped
            return
        mine = [a for a in self._round if a.direction == flow.direction]
        for a in mine:
            if isinstance(a.toxic, _Limit):
                keep = a.toxic.cut(self._state(flow, a), data)
                if keep is not None:
                    data = data[:keep]
                    flow.ending = flow.ending or a.toxic.ending
                    self._acted(conn, flow, a)
        chunks = [(now, data)] if data else []
        for a in mine:
            if isinstance(a.toxic, _Timing) and chunks:
                state = self._state(flow, a)
                chunks = [c for at, d in chunks for c in a.toxic.schedule(state, at, d)]
                self._acted(conn, flow, a)
        last = flow.queue[-1][0] if flow.queue else -math.inf
        for at, piece in chunks:
            last = max(last, at)  # a shorter delay never overtakes
            flow.queue.append((last, piece))
            flow.queued += len(piece)

    def _emit(self, conn: _Conn, flow: _Flow, data: bytes, now: float) -> None:
        if flow.gate is not None:
            flow.held += data
        else:
            self._enqueue(conn, flow, data, now)

    def _flush(self, conn: _Conn, flow: _Flow, now: float) -> float | None:
        """Send the due chunks; the next release time (inf: none), None if reset."""
        while flow.queue and not flow.blocked:
            at, data = flow.queue[0]
            if at > now:
                return at
            try:
                sent = flow.dst.send(data)
            except BlockingIOError:
                sent = 0
            except OSError:  # that side is gone: pass the reset on
                self._abort(conn, count=False)
                return None
            self._count(flow, sent)
            if sent < len(data):
                flow.queue[0] = (at, data[sent:])
                flow.blocked = True
            else:
                flow.queue.popleft()
        return math.inf

    def _count(self, flow: _Flow, sent: int) -> None:
        flow.queued -= sent
        with self._lock:
            s = self._stats
            if flow.direction == "upstream":
                self._stats = dataclasses.replace(s, bytes_upstream=s.bytes_upstream + sent)
            else:
                self._stats = dataclasses.replace(s, bytes_downstream=s.bytes_downstream + sent)

    # ------------------------------------------------------------------- gates and ends

    @staticmethod
    def _gate(flow: _Flow, until: float) -> None:
        flow.gate = until if flow.gate is None else max(flow.gate, until)

    def _ungate(self, conn: _Conn, flow: _Flow, now: float) -> None:
        data, ending = bytes(flow.held), flow.gated_ending
        flow.held.clear()
        flow.gate = flow.gated_ending = None
        self._enqueue(conn, flow, data, now)
        if ending is not None:
            flow.ending = flow.ending or ending

    @staticmethod
    def _end_flow(flow: _Flow, how: Literal["reset", "close"]) -> None:
        """End ``flow`` once what it has was sent (after its gate, if it has one)."""
        if flow.gate is not None:
            flow.gated_ending = flow.gated_ending or how
        else:
            flow.ending = flow.ending or how

    # ---------------------------------------------------------------------- toxic state

    def _state(self, flow: _Flow, active: _Active) -> Any:
        if active not in flow.states:
            flow.states[active] = active.toxic.new_state()
        return flow.states[active]

    def _acted(self, conn: _Conn, flow: _Flow, active: _Active) -> None:
        if active not in flow.acted:
            flow.acted.add(active)
            self._record(_SITES[flow.direction], active.toxic, conn.number)
