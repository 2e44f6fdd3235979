"""A group's ordered list of the instance's upstreams and its own credentials for them.

Rows live in ``dependency_proxy_group_upstreams``. A group with no positioned row uses
every instance upstream in the instance's order; owners narrow and reorder that list
(:meth:`GroupUpstreamRecords.set_order`) and give an upstream a credential of the
group's own, encrypted at rest (:mod:`..credentials`). A row without a position only
keeps a credential, so narrowing an upstream out and back in keeps its credential.

Names the instance no longer defines are skipped, never an error: the instance's
configuration may change under the groups' rows.

Callers get frozen records; listings never carry a secret. Reads leave the
transaction to the caller's database phase; writes commit.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import typing as t

import sqlalchemy as sa

from ..upstream.credentials import CredentialCipher, CredentialError
from .records import SessionRecords
from .tables import GroupUpstreamRow, utcnow
from .transaction import commit_retrying

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

log = logging.getLogger(__name__)

#: Bounds of a group's own credential (a GCR JSON key is a password of about 2.5 KB).
MAX_USERNAME_LENGTH = 255
MAX_PASSWORD_LENGTH = 8192


class UpstreamListError(ValueError):
    """An order or credential the group cannot have; the message says why."""


@dataclasses.dataclass(frozen=True)
class GroupUpstream:
    """One entry of a group's ordered list, with the group's own credential (decrypted)
    or ``None`` for the instance's credential."""

    name: str
    username: str | None
    password: str | None = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class GroupUpstreamItem:
    """An instance upstream as a group's page and API list it (never the secret).

    :param position: 1-based place in the group's order; ``None``: the group does not use it.
    :param credential_set: the group keeps a credential of its own for it.
    :param credential_unreadable: that credential cannot be decrypted with the configured
        keys (it is not used; set it again).
    """

    name: str
    position: int | None
    credential_set: bool
    credential_unreadable: bool
    updated_at: dt.datetime | None

    @property
    def used(self) -> bool:
        return self.position is not None


@dataclasses.dataclass(frozen=True)
class GroupUpstreamList:
    """:param custom_order: the group keeps its own order (else the instance's applies)."""

    custom_order: bool
    items: tuple[GroupUpstreamItem, ...]


@dataclasses.dataclass(frozen=True)
class RotationResult:
    """:param unreadable: ``(group_id, upstream)`` of rows no configured key decrypts."""

    rotated: int
    unreadable: tuple[tuple[int, str], ...]


class GroupUpstreamRecords(SessionRecords):
    """The queries, run through the host's session; built once by the extension (its
    ``ProxyState.group_upstreams``).

    :param session: returns the session to use (the host's ``db.session``).
    :param cipher: encrypts and decrypts the groups' credentials.
    """

    def __init__(self, session: t.Callable[[], Session], cipher: CredentialCipher) -> None:
        super().__init__(session)
        self._cipher = cipher

    def _rows(self, group_id: int) -> list[GroupUpstreamRow]:
        return list(
            self.session.execute(
                sa.select(GroupUpstreamRow).where(GroupUpstreamRow.group_id == group_id)
            )
            .scalars()
            .all()
        )

    # -- what pulls use ---------------------------------------------------------------

    def ordered(self, group_id: int, instance_names: t.Sequence[str]) -> list[GroupUpstream]:
        """The upstreams a group asks, in order, with the group's own credentials.

        Every instance upstream in the instance's order unless the group keeps its own
        order. A credential that cannot be decrypted is logged (the group and upstream,
        never the value) and left out: the instance's credential is used instead.
        """
        rows = {row.upstream: row for row in self._rows(group_id)}
        result = []
        for name in _order(rows, instance_names):
            row = rows.get(name)
            username = password = None
            if row is not None and row.password_encrypted is not None:
                try:
                    username, password = self._decrypt(row)
                except CredentialError:
                    log.warning(
                        "group %s: the credential for upstream %r cannot be decrypted with"
                        " the configured keys; using the instance's credential",
                        group_id,
                        name,
                    )
            result.append(GroupUpstream(name, username, password))
        return result

    def _decrypt(self, row: GroupUpstreamRow) -> tuple[str, str]:
        if row.username_encrypted is None or row.password_encrypted is None:
            raise CredentialError("half a credential")
        return (
            self._cipher.decrypt(row.username_encrypted),
            self._cipher.decrypt(row.password_encrypted),
        )

    # -- what the page and the API show -----------------------------------------------

    def listing(self, group_id: int, instance_names: t.Sequence[str]) -> GroupUpstreamList:
        """Every instance upstream: those the group uses first, in its order, then the
        others in the instance's order."""
        rows = {row.upstream: row for row in self._rows(group_id)}
        order = _order(rows, instance_names)
        unused = [name for name in instance_names if name not in order]
        items = []
        for position, name in [*enumerate(order, 1), *((None, name) for name in unused)]:
            row = rows.get(name)
            has_credential = row is not None and row.password_encrypted is not None
            unreadable = False
            if row is not None and has_credential:
                try:
                    self._decrypt(row)
                except CredentialError:
                    unreadable = True
            items.append(
                GroupUpstreamItem(
                    name=name,
                    position=position,
                    credential_set=has_credential,
                    credential_unreadable=unreadable,
                    updated_at=row.updated_at if row is not None else None,
                )
            )
        return GroupUpstreamList(_has_own_order(rows), tuple(items))

    # -- what owners change -----------------------------------------------------------

    def set_order(
        self,
        group_id: int,
        names: t.Sequence[str] | None,
        *,
        instance_names: t.Sequence[str],
        now: dt.datetime | None = None,
    ) -> None:
        """Keep ``names`` as the group's own order (narrowed and reordered), or, with
        ``None``, go back to every instance upstream in the instance's order. Commits.

        :raises UpstreamListError: an empty list, a repeated name, or a name the
            instance does not define.
        """
        if names is not None:
            check_order(names, instance_names)
        moment = now or utcnow()

        def change() -> None:
            rows = {row.upstream: row for row in self._rows(group_id)}
            wanted = {name: index for index, name in enumerate(names or ())}
            for name, row in rows.items():
                position = wanted.get(name)
                if row.position != position:
                    row.position = position
                    row.updated_at = moment
                if position is None and row.password_encrypted is None:
                    self.session.delete(row)
            for name, index in wanted.items():
                if name not in rows:
                    self.session.add(
                        GroupUpstreamRow(
                            group_id=group_id, upstream=name, position=index, updated_at=moment
                        )
                    )

        self._commit(change, group_id)

    def set_credentials(
        self,
        group_id: int,
        name: str,
        username: str,
        password: str,
        *,
        instance_names: t.Sequence[str],
        now: dt.datetime | None = None,
    ) -> None:
        """Keep the group's own credential for upstream ``name``, encrypted. Commits.

        :raises UpstreamListError: an unknown upstream or a credential out of bounds.
        """
        if name not in instance_names:
            raise UpstreamListError(f"{name!r} is not an upstream of this instance")
        problem = credential_problem(username, password)
        if problem is not None:
            raise UpstreamListError(problem)
        username_token = self._cipher.encrypt(username)
        password_token = self._cipher.encrypt(password)
        moment = now or utcnow()

        def change() -> None:
            row = self.session.get(GroupUpstreamRow, (group_id, name))
            if row is None:
                # No place in the group's own order: the order, default or own, stays.
                row = GroupUpstreamRow(group_id=group_id, upstream=name, position=None)
                self.session.add(row)
            row.username_encrypted = username_token
            row.password_encrypted = password_token
            row.updated_at = moment

        self._commit(change, group_id)

    def clear_credentials(
        self, group_id: int, name: str, *, now: dt.datetime | None = None
    ) -> bool:
        """Forget the group's own credential for ``name``; whether it had one. Commits."""
        row = self.session.get(GroupUpstreamRow, (group_id, name))
        if row is None or row.password_encrypted is None:
            self.session.rollback()
            return False
        if row.position is None:
            self.session.delete(row)
        else:
            row.username_encrypted = None
            row.password_encrypted = None
            row.updated_at = now or utcnow()
        self.session.commit()
        return True

    def rotate_all(self, batch_size: int = 500) -> RotationResult:
        """Re-encrypt every stored credential with the newest key, ``batch_size`` rows
        per transaction; rows no configured key decrypts are left as they are."""
        rotated = 0
        unreadable: list[tuple[int, str]] = []
        after: tuple[int, str] = (-1, "")
        while True:
            rows = (
                self.session.execute(
                    sa.select(GroupUpstreamRow)
                    .where(
                        GroupUpstreamRow.password_encrypted.is_not(None),
                        sa.tuple_(GroupUpstreamRow.group_id, GroupUpstreamRow.upstream)
                        > sa.tuple_(sa.literal(after[0]), sa.literal(after[1])),
                    )
                    .order_by(GroupUpstreamRow.group_id, GroupUpstreamRow.upstream)
                    .limit(batch_size)
                )
                .scalars()
                .all()
            )
            if not rows:
                self.session.rollback()
                return RotationResult(rotated, tuple(unreadable))
            for row in rows:
                try:
                    if row.username_encrypted is None or row.password_encrypted is None:
                        raise CredentialError("half a credential")
                    username = self._cipher.rotate(row.username_encrypted)
                    password = self._cipher.rotate(row.password_encrypted)
                except CredentialError:
                    unreadable.append((row.group_id, row.upstream))
                    continue
                row.username_encrypted = username
                row.password_encrypted = password
                rotated += 1
            after = (rows[-1].group_id, rows[-1].upstream)
            self.session.commit()

    def _commit(self, change: t.Callable[[], None], group_id: int) -> None:
        # A retry runs ``change`` again: another request may have added one of the
        # group's rows at the same moment.
        commit_retrying(self.session, change, what=f"the upstreams of group {group_id}")


def credential_problem(username: t.Any, password: t.Any) -> str | None:
    """Why a credential cannot be kept (never quoting it), or ``None``."""
    if not isinstance(username, str) or not 1 <= len(username) <= MAX_USERNAME_LENGTH:
        return f"the username must be 1 to {MAX_USERNAME_LENGTH} characters"
    if ":" in username or any(ord(c) < 32 or ord(c) == 127 for c in username):
        return "the username must not contain ':' or control characters"
    if not isinstance(password, str) or not 1 <= len(password) <= MAX_PASSWORD_LENGTH:
        return f"the password must be 1 to {MAX_PASSWORD_LENGTH} characters"
    if "\x00" in password:
        return "the password must not contain NUL characters"
    return None


def _has_own_order(rows: t.Mapping[str, GroupUpstreamRow]) -> bool:
    return any(row.position is not None for row in rows.values())


def _order(rows: t.Mapping[str, GroupUpstreamRow], instance_names: t.Sequence[str]) -> list[str]:
    """The names a group asks, in order: its own order (names the instance still
    defines), else the instance's."""
    if not _has_own_order(rows):
        return list(instance_names)
    known = set(instance_names)
    positioned = sorted(
        (row for row in rows.values() if row.position is not None and row.upstream in known),
        key=lambda row: (row.position, row.upstream),
    )
    return [row.upstream for row in positioned]


def check_order(names: t.Sequence[str], instance_names: t.Sequence[str]) -> None:
    if not names:
        raise UpstreamListError("keep at least one upstream (or go back to the instance's list)")
    unknown = [name for name in names if name not in instance_names]
    if unknown:
        listed = ", ".join(repr(name[:64]) for name in unknown[:5])
        raise UpstreamListError(f"not an upstream of this instance: {listed}")
    if len(set(names)) != len(names):
        raise UpstreamListError("an upstream is listed twice")
