"""What every record class of the extension's tables shares: it runs its queries
through the host's session, looked up on each use (a scoped session belongs to the
request or thread that asks, never to the object)."""

from __future__ import annotations

import typing as t

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session


class SessionRecords:
    """Queries of one family of tables, run through the host's session.

    :param session: returns the session to use (the host's ``db.session``).
    """

    def __init__(self, session: t.Callable[[], Session]) -> None:
        self._session = session

    @property
    def session(self) -> Session:
        return self._session()
