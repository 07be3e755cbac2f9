"""Open the engines of several hosts at once.

Each SSH engine costs a key exchange, an authentication and a `docker system dial-stdio`
command on its host, which starts the account's login shell. The prepare phase needs both
hosts, so connecting to them in parallel threads saves the shorter of the two.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any


def open_engines(open_engine: Callable[[str], Any],
                 host_names: Sequence[str]) -> tuple[dict[str, Any], BaseException | None]:
    """Call `open_engine(name)` for every host name in its own thread.

    Returns the engines that opened and the error of the first host, in `host_names` order,
    that failed (None when all opened). The caller owns, and must close, every returned
    engine, also when it then raises the error.
    """
    engines: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def open_one(name: str) -> None:
        try:
            engines[name] = open_engine(name)
        except BaseException as error:  # noqa: BLE001 - returned to the calling thread
            errors[name] = error

    threads = [threading.Thread(target=open_one, args=(name,), name=f"ddm-connect-{name}", daemon=True)
               for name in host_names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    first_error = next((errors[name] for name in host_names if name in errors), None)
    return engines, first_error
