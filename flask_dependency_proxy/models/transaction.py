"""One write that may lose a race with another transaction, and its retry.

Rows keyed by something callers choose (a group's settings, a tag, a blob digest, a
throttling key) are read, then changed or added, then committed. Two workers doing that
at once for the same key both see no row, both insert, and one commit fails on the
unique key (``IntegrityError``); or a row read is deleted by cleanup before the write
(``StaleDataError``). The loser rolls back and does it all again: the second time it
reads the winner's row and changes that one. :func:`commit_retrying` is that loop, so
every such write has it, and has it the same way.
"""

from __future__ import annotations

import typing as t

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm.exc import StaleDataError

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session, scoped_session

T = t.TypeVar("T")

#: The row about to be inserted was inserted meanwhile.
INSERTED_MEANWHILE: tuple[type[Exception], ...] = (IntegrityError,)
#: That, or the row read was deleted meanwhile (cleanup).
LOST_RACE: tuple[type[Exception], ...] = (IntegrityError, StaleDataError)


class LostRace(RuntimeError):
    """Every attempt of a write lost its race to another transaction."""


def commit_retrying(
    session: Session | scoped_session[t.Any],
    write: t.Callable[[], T],
    *,
    what: str,
    attempts: int = 2,
    lost: tuple[type[Exception], ...] = INSERTED_MEANWHILE,
) -> T:
    """Run ``write`` and commit; when that loses a race (``lost``), roll back and run it
    again, at most ``attempts`` times in all.

    :param write: reads its rows afresh (a retry must see the winner's row), changes or
        adds them, and returns what the caller answers; it may flush, so that what it
        returns is taken before the commit.
    :param what: what is saved, for the error.
    :raises LostRace: every attempt lost.
    """
    for _attempt in range(attempts):
        try:
            result = write()
            session.commit()
        except lost:
            session.rollback()
            continue
        return result
    raise LostRace(f"could not save {what}")


def rowcount(result: t.Any) -> int:
    """Rows an ``UPDATE`` or ``DELETE`` matched (``0`` when the driver does not say)."""
    return int(getattr(result, "rowcount", 0) or 0)
