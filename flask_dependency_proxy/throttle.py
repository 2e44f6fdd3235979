"""Slows down password guessing through ``/jwt/auth``.

Failures are counted per username and per client address in the host's database, so
every worker and host shares one count. Past ``LOGIN_MAX_FAILURES`` failures within
``LOGIN_FAILURE_WINDOW_SECONDS``, further attempts for that key are refused with 429
before the credential is even checked, until the window ends.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import typing as t

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from .errors import ErrorCode, RegistryError
from .models.tables import LoginFailure, utcnow

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session, scoped_session


def _key(kind: str, value: str) -> str:
    # Hashed: a username field sometimes holds a pasted password.
    return hashlib.sha256(f"{kind}\0{value.lower()}".encode()).hexdigest()


class LoginThrottle:
    """:param max_failures: failures allowed per key and window; ``0`` disables throttling."""

    def __init__(
        self,
        session: t.Callable[[], Session | scoped_session[t.Any]],
        *,
        max_failures: int,
        window_seconds: float,
        clock: t.Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self.max_failures = max_failures
        self.window = dt.timedelta(seconds=window_seconds)
        self._clock = clock

    def keys(self, username: str, address: str | None) -> list[str]:
        keys = [_key("user", username[:256])]
        if address:
            keys.append(_key("addr", address))
        return keys

    def check(self, keys: list[str]) -> set[str]:
        """Returns the keys that have recent failures.

        :raises RegistryError: ``TOOMANYREQUESTS`` with ``Retry-After`` for a throttled key.
        """
        if not self.max_failures:
            return set()
        now = self._clock()
        rows = (
            self._session()
            .execute(
                sa.select(
                    LoginFailure.key, LoginFailure.failures, LoginFailure.window_started_at
                ).where(LoginFailure.key.in_(keys))
            )
            .all()
        )
        wait = max(
            (
                (row.window_started_at + self.window - now).total_seconds()
                for row in rows
                if row.failures >= self.max_failures and row.window_started_at + self.window > now
            ),
            default=0.0,
        )
        if wait > 0:
            raise RegistryError(
                ErrorCode.TOOMANYREQUESTS,
                "too many failed logins; try again later",
                headers={"Retry-After": str(int(wait) + 1)},
            )
        return {row.key for row in rows}

    def record_failure(self, keys: list[str]) -> None:
        if not self.max_failures:
            return
        session = self._session()
        now = self._clock()
        for key in keys:
            for _attempt in range(2):
                row = session.get(LoginFailure, key)
                if row is None:
                    session.add(LoginFailure(key=key, failures=1, window_started_at=now))
                elif row.window_started_at + self.window <= now:
                    row.failures = 1
                    row.window_started_at = now
                else:
                    session.execute(
                        sa.update(LoginFailure)
                        .where(LoginFailure.key == key)
                        .values(failures=LoginFailure.failures + 1)
                    )
                try:
                    session.commit()
                    break
                except IntegrityError:
                    session.rollback()

    def record_success(self, keys: list[str], with_failures: set[str]) -> None:
        """A good password clears its username's count (not its address's)."""
        if keys[0] not in with_failures:
            return
        session = self._session()
        session.execute(sa.delete(LoginFailure).where(LoginFailure.key == keys[0]))
        session.commit()
