"""One call at a time per key: concurrent callers with the same key wait for the first
one and share its result or its error: the upstream client's manifest requests, the
cache's blob confirmations, and the host's answers about a credential or a group, which
a herd of clients arriving at once at a fresh worker would otherwise each ask for."""

from __future__ import annotations

import threading
import typing as t

_T = t.TypeVar("_T")


class _Call(t.Generic[_T]):
    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: _T | None = None
        self.error: BaseException | None = None


class SingleFlight:
    """Concurrent calls with the same key wait for the first one and share its outcome."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[t.Hashable, _Call[t.Any]] = {}

    def do(self, key: t.Hashable, call: t.Callable[[], _T]) -> _T:
        with self._lock:
            running = self._calls.get(key)
            if running is None:
                mine: _Call[_T] = _Call()
                self._calls[key] = mine
        if running is not None:
            running.done.wait()
            if running.error is not None:
                raise running.error
            return t.cast(_T, running.result)
        try:
            mine.result = call()
            return mine.result
        except BaseException as exc:
            mine.error = exc
            raise
        finally:
            with self._lock:
                del self._calls[key]
            mine.done.set()
