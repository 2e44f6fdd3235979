"""Rows of ``dependency_proxy_pulls``: who pulled what.

The value type :class:`PullEntry` lives here, below the in-memory buffer that collects
entries on the pull path (:mod:`..cache.audit`) and writes them with
:func:`write_pulls`, one ``INSERT`` per batch. The queries answer the pages, the REST
API and ``flask dependency-proxy pulls``; cleanup forgets entries past the retention.

The host's job context is stored as it was given (a JSON object); only its ``project``
is copied into a column of its own, so pulls can be found by project.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import typing as t

import sqlalchemy as sa

from .listings import Page
from .records import SessionRecords
from .tables import PullRecord

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session

#: The context key copied into a column of its own.
PROJECT_KEY = "project"
#: Most context keys and characters per value kept of one pull.
MAX_CONTEXT_KEYS = 16
MAX_CONTEXT_VALUE = 255


@dataclasses.dataclass(frozen=True)
class PullEntry:
    """One manifest pull.

    :param digest: the digest served or refused; ``None`` when none was known.
    :param outcome: hit, revalidated, miss, stale, cooldown-previous, refused or blocked.
    :param context: the host's job context of the principal (project, pipeline, job ...).
    """

    pulled_at: dt.datetime
    group_id: int
    image: str
    reference: str
    digest: str | None
    outcome: str
    principal_kind: str
    subject: str
    username: str
    context: t.Mapping[str, str] | None = None
    client_address: str | None = None
    user_agent: str | None = None
    id: int | None = None

    @property
    def project(self) -> str | None:
        value = (self.context or {}).get(PROJECT_KEY)
        return None if value is None else str(value)[:MAX_CONTEXT_VALUE]


@dataclasses.dataclass(frozen=True)
class PullFilter:
    """What :meth:`PullRecords.find` narrows by; ``None`` leaves a field out.

    :param group_id: ``None``: every group.
    """

    group_id: int | None = None
    digest: str | None = None
    image: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    subject: str | None = None
    project: str | None = None


@dataclasses.dataclass(frozen=True)
class PullSummary:
    """Who pulled a digest: how many pulls, and the projects of the latest ones."""

    count: int
    projects: tuple[str, ...]
    last_pulled_at: dt.datetime | None


def _context_text(context: t.Mapping[str, str] | None) -> str | None:
    if not context:
        return None
    kept = {
        str(key)[:64]: str(value)[:MAX_CONTEXT_VALUE]
        for key, value in list(context.items())[:MAX_CONTEXT_KEYS]
    }
    return json.dumps(kept, sort_keys=True)


def _context(text: str | None) -> dict[str, str] | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def write_pulls(session: Session, batch: t.Sequence[PullEntry]) -> None:
    """Insert ``batch`` in one statement, then commit."""
    if not batch:
        return
    rows = [
        {
            "pulled_at": entry.pulled_at,
            "group_id": entry.group_id,
            "image": entry.image[:255],
            "reference": entry.reference[:135],
            "digest": entry.digest,
            "outcome": entry.outcome,
            "principal_kind": entry.principal_kind[:32],
            "subject": entry.subject[:255],
            "username": entry.username[:255],
            "project": entry.project,
            "context": _context_text(entry.context),
            "client_address": (entry.client_address or None) and entry.client_address[:64],
            "user_agent": (entry.user_agent or None) and entry.user_agent[:255],
        }
        for entry in batch
    ]
    try:
        # Core, not the ORM: a batch of thousands of rows costs half the CPU.
        session.execute(t.cast(sa.Table, PullRecord.__table__).insert(), rows)
        session.commit()
    except BaseException:
        session.rollback()
        raise


def _entry(row: PullRecord) -> PullEntry:
    return PullEntry(
        id=row.id,
        pulled_at=row.pulled_at,
        group_id=row.group_id,
        image=row.image,
        reference=row.reference,
        digest=row.digest,
        outcome=row.outcome,
        principal_kind=row.principal_kind,
        subject=row.subject,
        username=row.username,
        context=_context(row.context),
        client_address=row.client_address,
        user_agent=row.user_agent,
    )


class PullRecords(SessionRecords):
    """Queries of the pull record."""

    def find(self, where: PullFilter, page: int, per_page: int) -> Page[PullEntry]:
        """One page of the pulls ``where`` selects, newest first."""
        conditions = _conditions(where)
        total = self.session.execute(
            sa.select(sa.func.count()).select_from(PullRecord).where(*conditions)
        ).scalar_one()
        rows = self.session.execute(
            sa.select(PullRecord)
            .where(*conditions)
            .order_by(PullRecord.pulled_at.desc(), PullRecord.id.desc())
            .offset((page - 1) * per_page)
            .limit(per_page)
        ).scalars()
        return Page(tuple(_entry(row) for row in rows), page, per_page, int(total))

    def summary(
        self,
        digests: t.Sequence[str],
        group_id: int | None,
        since: dt.datetime | None = None,
        *,
        image: str | None = None,
        projects: int = 5,
    ) -> PullSummary:
        """How often ``digests`` (or, with no digests, ``image``) were pulled since
        ``since`` (in ``group_id``, ``None``: any group), and the distinct projects of
        the latest pulls."""
        conditions: list[t.Any] = []
        if digests:
            conditions.append(PullRecord.digest.in_(list(digests)))
        elif image is not None:
            conditions.append(PullRecord.image == image)
        else:
            return PullSummary(0, (), None)
        if group_id is not None:
            conditions.append(PullRecord.group_id == group_id)
        if since is not None:
            conditions.append(PullRecord.pulled_at >= since)
        count, last = self.session.execute(
            sa.select(sa.func.count(), sa.func.max(PullRecord.pulled_at)).where(*conditions)
        ).one()
        latest = self.session.execute(
            sa.select(PullRecord.project, sa.func.max(PullRecord.pulled_at).label("last"))
            .where(*conditions, PullRecord.project.is_not(None))
            .group_by(PullRecord.project)
            .order_by(sa.desc("last"))
            .limit(projects)
        ).all()
        return PullSummary(int(count), tuple(str(row[0]) for row in latest), last)

    def last_pull(
        self, group_id: int, image: str, reference: str, since: dt.datetime
    ) -> PullEntry | None:
        """The group's last pull of ``image`` by ``reference`` at or after ``since``;
        the bound keeps the search to the group's pulls since then (its index)."""
        row = (
            self.session.execute(
                sa.select(PullRecord)
                .where(
                    PullRecord.group_id == group_id,
                    PullRecord.pulled_at >= since,
                    PullRecord.image == image,
                    PullRecord.reference == reference,
                )
                .order_by(PullRecord.pulled_at.desc(), PullRecord.id.desc())
                .limit(1)
            )
            .scalars()
            .first()
        )
        return None if row is None else _entry(row)

    def forget_before(self, moment: dt.datetime, batch_size: int) -> int:
        """Delete pulls older than ``moment``, ``batch_size`` rows a transaction."""
        deleted = 0
        while True:
            ids = (
                self.session.execute(
                    sa.select(PullRecord.id)
                    .where(PullRecord.pulled_at < moment)
                    .order_by(PullRecord.pulled_at)
                    .limit(batch_size)
                )
                .scalars()
                .all()
            )
            if not ids:
                self.session.rollback()
                return deleted
            self.session.execute(sa.delete(PullRecord).where(PullRecord.id.in_(ids)))
            self.session.commit()
            deleted += len(ids)


def _conditions(where: PullFilter) -> list[t.Any]:
    conditions: list[t.Any] = []
    for column, value in (
        (PullRecord.group_id, where.group_id),
        (PullRecord.digest, where.digest),
        (PullRecord.image, where.image),
        (PullRecord.subject, where.subject),
        (PullRecord.project, where.project),
    ):
        if value is not None:
            conditions.append(column == value)
    if where.since is not None:
        conditions.append(PullRecord.pulled_at >= where.since)
    if where.until is not None:
        conditions.append(PullRecord.pulled_at < where.until)
    return conditions
