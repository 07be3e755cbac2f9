"""Ask the source and the target host for the prepare phase's engine facts at once.

Each request to a host waits for a round trip over its SSH connection. So the
ping, GET /info and the helper container listing go out in one thread per host,
and the two hosts are asked at the same time instead of one after the other.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ddmsyncer import volumes


@dataclass(frozen=True)
class HostFacts:
    """Engine facts that prepare reads from one host before it checks the volumes."""

    engine_id: str
    volumes_root: str
    helpers_removed: int


def query_hosts(engines: Sequence[Any], task_id: str) -> list[HostFacts]:
    """Ping each engine, read its /info once and remove the task's leftover helper containers.

    Returns one HostFacts per engine, in order. An engine that appears twice (source
    and target on one host name) is asked once. Raises the error of the first engine,
    in order, that failed, after every thread has ended.
    """
    unique = list({id(engine): engine for engine in engines}.values())
    facts: dict[int, HostFacts] = {}
    errors: dict[int, BaseException] = {}

    def query(engine: Any) -> None:
        try:
            facts[id(engine)] = _query_host(engine, task_id)
        except BaseException as error:  # noqa: BLE001 - raised again in the calling thread
            errors[id(engine)] = error

    if len(unique) == 1:
        query(unique[0])
    else:
        threads = [threading.Thread(target=query, args=(engine,),
                                    name=f"ddm-query-{engine.host.name}", daemon=True)
                   for engine in unique]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    for engine in unique:
        if id(engine) in errors:
            raise errors[id(engine)]
    return [facts[id(engine)] for engine in engines]


def _query_host(engine: Any, task_id: str) -> HostFacts:
    engine.ping()
    info = engine.api.info()
    # The helpers belong to an earlier run of this task only, because this run has
    # created none yet. Removing them touches no volume.
    removed = volumes.remove_task_helpers(engine, task_id)
    return HostFacts(engine_id=str(info.get("ID") or ""),
                     volumes_root=volumes.volumes_root_of(info),
                     helpers_removed=removed)
