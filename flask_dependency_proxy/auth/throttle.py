"""Limits password guessing per client address, never per username alone.

Failures are counted in the host's database, so every worker and host shares one
count, under two keys: the username together with the client address, and the client
address alone. Past ``max_failures`` failures for a (username, address) pair, or
``max_failures_per_address`` for an address, within ``window_seconds`` of that key's
first failure, :meth:`LoginThrottle.check` refuses the attempt until the window ends.
Someone else's failures from another address therefore never refuse a correct
password, and a refused attempt is turned away before any password hash is computed.

The limiter knows nothing of HTTP: the registry's token endpoint answers a refusal
with ``429 TOOMANYREQUESTS``, a host's sign-in form with its own page.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import logging
import math
import typing as t

import sqlalchemy as sa

from ..models.tables import LoginFailure, utcnow
from ..models.transaction import LostRace, commit_retrying

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session, scoped_session

#: The logger the README documents for refused logins (named before this module moved).
log = logging.getLogger("flask_dependency_proxy.throttle")

#: Longest part of a username that goes into a key.
_MAX_USERNAME = 256


def _key(*parts: str) -> str:
    # Hashed: a username field sometimes holds a pasted password.
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


class LoginRefused(Exception):
    """Too many recent failures for this username from this address, or from this address.

    :param retry_after_seconds: when the refusing window ends, rounded up.
    """

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__(f"too many failed logins; try again in {retry_after_seconds} s")
        self.retry_after_seconds = retry_after_seconds


@dataclasses.dataclass(frozen=True)
class LoginAttempt:
    """One login's throttling keys, from :meth:`LoginThrottle.check`.

    :param address: the client address as given (shown in the log when it is throttled).
    :param pair_key: the key of the username together with the address.
    :param address_key: the key of the address alone.
    :param pair_has_failures: whether the pair has failures a success should clear.
    """

    address: str
    pair_key: str
    address_key: str
    pair_has_failures: bool = False


class LoginThrottle:
    """Counts failed logins per (username, client address) and per client address.

    :param session: the host's database session.
    :param max_failures: failures allowed per (username, address) and window; ``0``
        turns throttling off altogether.
    :param max_failures_per_address: failures allowed per address and window, whatever
        the usernames; ``0`` turns this limit off.
    :param window_seconds: how long a key's count lasts from its first failure; also
        the longest refusal.
    """

    def __init__(
        self,
        session: t.Callable[[], Session | scoped_session[t.Any]],
        *,
        max_failures: int,
        max_failures_per_address: int,
        window_seconds: float,
        clock: t.Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self._session = session
        self.max_failures = max_failures
        self.max_failures_per_address = max_failures_per_address
        self.window = dt.timedelta(seconds=window_seconds)
        self._clock = clock

    def check(self, username: str, address: str | None) -> LoginAttempt:
        """Call before a password is checked.

        :param address: the client address; ``None`` (no address known) is one shared address.
        :raises LoginRefused: the pair or the address has reached its limit.
        """
        address = address or ""
        attempt = LoginAttempt(
            address=address,
            pair_key=_key("pair", username[:_MAX_USERNAME].lower(), address),
            address_key=_key("address", address),
        )
        if not self.max_failures:
            return attempt
        now = self._clock()
        rows = self._session().execute(
            sa.select(
                LoginFailure.key, LoginFailure.failures, LoginFailure.window_started_at
            ).where(LoginFailure.key.in_([attempt.pair_key, attempt.address_key]))
        )
        wait = 0.0
        pair_has_failures = False
        for row in rows:
            ends = row.window_started_at + self.window
            if ends <= now:
                continue
            pair_has_failures = pair_has_failures or row.key == attempt.pair_key
            if row.failures >= self._limit(attempt, row.key) > 0:
                wait = max(wait, (ends - now).total_seconds())
        if wait > 0:
            raise LoginRefused(math.ceil(wait))
        return dataclasses.replace(attempt, pair_has_failures=pair_has_failures)

    def record_failure(self, attempt: LoginAttempt) -> None:
        """Count a failure; log once when it makes a key reach its limit."""
        if not self.max_failures:
            return
        for key, limit, counted, refused in (
            (attempt.pair_key, self.max_failures, " for one username", " for that username"),
            (attempt.address_key, self.max_failures_per_address, "", ""),
        ):
            if limit and self._increment(key) == limit:
                log.warning(
                    "login throttled: client address %s reached %d failed logins%s within %d s;"
                    " its logins%s are refused (valid tokens excepted) until the window ends",
                    attempt.address or "(unknown)",
                    limit,
                    counted,
                    self.window.total_seconds(),
                    refused,
                )

    def record_success(self, attempt: LoginAttempt) -> None:
        """A correct password clears its pair's count, never its address's."""
        if not attempt.pair_has_failures:
            return
        session = self._session()
        session.execute(sa.delete(LoginFailure).where(LoginFailure.key == attempt.pair_key))
        session.commit()

    def _limit(self, attempt: LoginAttempt, key: str) -> int:
        return self.max_failures if key == attempt.pair_key else self.max_failures_per_address

    def _increment(self, key: str) -> int:
        """Add one failure to a key's window (a new window once it ended); the new count."""
        session = self._session()
        now = self._clock()

        def write() -> int:
            row = session.get(LoginFailure, key, populate_existing=True)
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
            # Read back inside the same transaction: the row is locked by the write, so
            # concurrent failures each see a count of their own.
            session.flush()
            count = session.scalar(sa.select(LoginFailure.failures).where(LoginFailure.key == key))
            return int(count or 0)

        try:
            return commit_retrying(session, write, what="a failed login")
        except LostRace:
            return 0
