"""The built-in sites: where the injector patches, and what each fault kind does there.

Every site is a patch of a class or module attribute, applied by :func:`install` and undone,
restoring the exact original object, by the :class:`Restorer` list it returns. A site counts
its calls with its :class:`~faults.schedule.Schedule`; a call on which the schedule does not
fire costs one ``decide()`` and nothing else (no event, no allocation).

========================  ===============================================================
:mod:`.base`              patches, the injector's environment, :class:`SiteFaults` (the
                          kinds applied the same way at every site)
:mod:`.llama`             ``llama.*``: ``llama_cpp.Llama`` itself
:mod:`.daemon`            ``daemon.*``: the decisions every HTTP client shares, and the
                          list of client families
:mod:`.httpx_client`      httpx and httpx2 (openai, ollama, langchain-openai ride on them)
:mod:`.urllib3_client`    urllib3, and requests on top of it
:mod:`.aiohttp_client`    aiohttp
:mod:`.wire`              the daemon.* sites on the fault proxy, for any client (the wire
                          route)
:mod:`.py`                ``py:MODULE:QUALNAME``: any downstream callable
========================  ===============================================================
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from faults.sites.base import (
    SOURCE,
    Env,
    Outputs,
    Patch,
    Restorer,
    SiteFaults,
    check_terms,
)

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from faults.schedule import Schedule
    from faults.sites.daemon import DaemonSites
    from faults.spec import Entry, Site

__all__ = ["SOURCE", "Env", "Installed", "Outputs", "Patch", "Restorer", "SiteFaults", "install"]


class Installed(list[Restorer]):
    """The restorers of one installation, in the order they were applied, and the daemon
    sites' bookkeeping (``daemon``: None when the spec names no daemon.* site)."""

    daemon: DaemonSites | None = None


def install(entries: Iterable[Entry], schedules: Mapping[Site, Schedule], env: Env) -> Installed:
    """Patch every site of ``entries``; the restorers, in the order they were applied.

    Raises :class:`SpecError` for a site that cannot be installed (a py: target that does not
    exist or cannot be patched, ``stall``/``truncate`` on a target that is not a generator,
    an exception type that does not resolve); nothing stays patched then. daemon.* sites
    with no target (``env.daemon``, ``env.proxy``) are installed but match no traffic.
    """
    done = Installed()
    try:
        llama: dict[str, SiteFaults] = {}
        daemon: dict[str, SiteFaults] = {}
        for entry in entries:
            check_terms(entry)
            site, name = entry.site, str(entry.site)
            if site.family == "llama":
                from faults.sites.llama import LLAMA_OUTPUTS  # noqa: PLC0415

                out = LLAMA_OUTPUTS[site.target]
                llama[site.target] = SiteFaults(name, schedules[site], env, out)
            elif site.family == "daemon":
                daemon[site.target] = SiteFaults(name, schedules[site], env, Outputs())
            else:
                from faults.sites.py import PY_OUTPUTS, install_py  # noqa: PLC0415

                done.append(install_py(entry, SiteFaults(name, schedules[site], env, PY_OUTPUTS)))
        if llama:
            try:
                import llama_cpp  # noqa: PLC0415 - optional, and costly to import
            except ImportError as exc:
                raise RuntimeError("the llama.* sites need llama-cpp-python installed") from exc
            from faults.sites.llama import LlamaSites  # noqa: PLC0415

            done.extend(LlamaSites(llama).install(llama_cpp.Llama))
        if daemon and env.route == "wire":
            from faults.sites.wire import install_wire  # noqa: PLC0415

            done.extend(install_wire(daemon, env))
        elif daemon:
            from faults.sites import daemon as daemon_sites  # noqa: PLC0415

            done.daemon, restorers = daemon_sites.install(daemon, env)
            done.extend(restorers)
    except BaseException:
        for restorer in reversed(done):
            restorer.restore()
        raise
    return done
