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
T_co = t.TypeVar("T_co", covariant=True)


class Pending(t.Protocol[T_co]):
    """A call started by :func:`in_thread`."""

    def ready(self) -> bool:
        """Whether the call has ended."""
        ...

    def get(self) -> T_co:
        """Wait for the call; its result, or its error raised here."""
        ...


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


def in_thread(func: t.Callable[..., T], *args: t.Any) -> Pending[T]:
    """Under gevent, start ``func(*args)`` on a thread of gevent's pool and return at
    once, so the caller (a fetch receiving its next chunk) goes on meanwhile; without
    gevent the call is made in place. ``get()`` waits for it and raises its error.

    No greenlet is spawned for the call: on a worker whose event loop is busy serving
    a herd, each greenlet switch waits its turn behind every other client, and a fetch
    that needed several per chunk would fall behind the clients following it.
    """
    if not gevent_patched():
        return _Done(func, args)
    import gevent

    return t.cast("Pending[T]", gevent.get_hub().threadpool.spawn(func, *args))


class _Done(t.Generic[T]):
    """A call already made, holding its result or its error for :meth:`get`."""

    def __init__(self, func: t.Callable[..., T], args: tuple[t.Any, ...]) -> None:
        self._error: Exception | None = None
        try:
            self._value: T | None = func(*args)
        except Exception as exc:
            self._value, self._error = None, exc

    def ready(self) -> bool:
        return True

    def get(self) -> T:
        if self._error is not None:
            raise self._error
        return t.cast(T, self._value)
