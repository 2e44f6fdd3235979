"""CPU and disk work of a blob miss, run where it does not stall the other clients.

Under gevent every greenlet of a worker shares one OS thread: hashing and writing a chunk
of a blob miss there keeps the worker from sending bytes to its clients meanwhile. gevent's
thread pool runs that work on another OS thread (``hashlib`` and file writes release the
GIL), so the worker keeps streaming while the fetch hashes. Without gevent the fetch runs
in a thread of its own already, and the work runs in place.
"""

from __future__ import annotations

import sys
import typing as t

T = t.TypeVar("T")


def gevent_patched() -> bool:
    """Whether the process runs under gevent's monkey patching (gunicorn's gevent worker)."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None:
        return False
    return bool(monkey.is_module_patched("socket") and monkey.is_module_patched("select"))


def off_the_loop(func: t.Callable[..., T], *args: t.Any) -> T:
    """``func(*args)``, on a thread of gevent's pool when the event loop would block."""
    if not gevent_patched():
        return func(*args)
    import gevent  # type: ignore[import-untyped]

    return t.cast(T, gevent.get_hub().threadpool.apply(func, args))
