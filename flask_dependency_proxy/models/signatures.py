"""Groups' signature policies and the verdicts pulls found under them: the one writer
of ``dependency_proxy_signature_policies`` and ``dependency_proxy_signature_verdicts``.

A verdict is keyed by group, image, digest and the fingerprint of the policy it was
made under, so a policy change (a new signer, a new trust root) never reuses one.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import typing as t

import sqlalchemy as sa

from .records import SessionRecords
from .tables import SignaturePolicyRow, SignatureVerdictRow
from .transaction import commit_retrying

if t.TYPE_CHECKING:
    from sqlalchemy.orm import Session


@dataclasses.dataclass(frozen=True)
class StoredPolicy:
    """A group's policy as stored: the mode and the signers' JSON document."""

    group_id: int
    mode: str
    document: str
    updated_at: dt.datetime


@dataclasses.dataclass(frozen=True)
class StoredVerdict:
    image: str
    digest: str
    fingerprint: str
    verdict: str
    checked_at: dt.datetime


class SignatureRecords(SessionRecords):
    """Reads and writes of signature policies and verdicts through the host's session."""

    def __init__(self, session: t.Callable[[], Session]) -> None:
        super().__init__(session)

    def policy(self, group_id: int) -> StoredPolicy | None:
        row = self.session.get(SignaturePolicyRow, group_id)
        if row is None:
            return None
        return StoredPolicy(row.group_id, row.mode, row.document, row.updated_at)

    def policies(self) -> list[StoredPolicy]:
        """Every group's policy (each worker keeps them in memory)."""
        rows = self.session.execute(sa.select(SignaturePolicyRow)).scalars()
        return [StoredPolicy(r.group_id, r.mode, r.document, r.updated_at) for r in rows]

    def delete_policy(self, group_id: int) -> None:
        """Drop the group's own policy (it follows the instance's default) and commit."""

        def write() -> None:
            self.session.execute(
                sa.delete(SignaturePolicyRow).where(SignaturePolicyRow.group_id == group_id)
            )

        commit_retrying(self.session, write, what=f"the signature policy of group {group_id}")

    def save_policy(self, group_id: int, mode: str, document: str, now: dt.datetime) -> None:
        """Replace the group's policy and commit."""

        def write() -> None:
            row = self.session.get(SignaturePolicyRow, group_id)
            if row is None:
                row = SignaturePolicyRow(group_id=group_id)
                self.session.add(row)
            row.mode, row.document, row.updated_at = mode, document, now
            self.session.flush()

        commit_retrying(self.session, write, what=f"the signature policy of group {group_id}")

    def verdict(
        self, group_id: int, image: str, digest: str, fingerprint: str
    ) -> StoredVerdict | None:
        row = self.session.execute(
            sa.select(SignatureVerdictRow).where(
                SignatureVerdictRow.group_id == group_id,
                SignatureVerdictRow.image == image,
                SignatureVerdictRow.digest == digest,
                SignatureVerdictRow.fingerprint == fingerprint,
            )
        ).scalar_one_or_none()
        return None if row is None else _stored(row)

    def save_verdict(
        self,
        group_id: int,
        image: str,
        digest: str,
        fingerprint: str,
        verdict: str,
        now: dt.datetime,
    ) -> None:
        """Record (or replace) a verdict and commit."""

        def write() -> None:
            row = self.session.execute(
                sa.select(SignatureVerdictRow).where(
                    SignatureVerdictRow.group_id == group_id,
                    SignatureVerdictRow.image == image,
                    SignatureVerdictRow.digest == digest,
                    SignatureVerdictRow.fingerprint == fingerprint,
                )
            ).scalar_one_or_none()
            if row is None:
                row = SignatureVerdictRow(
                    group_id=group_id, image=image, digest=digest, fingerprint=fingerprint
                )
                self.session.add(row)
            row.verdict, row.checked_at = verdict, now
            self.session.flush()

        commit_retrying(self.session, write, what=f"the signature verdict of {image}@{digest}")

    def latest_verdicts(
        self, group_id: int, keys: t.Iterable[tuple[str, str]]
    ) -> dict[tuple[str, str], StoredVerdict]:
        """The newest verdict of each ``(image, digest)`` of the group, whatever policy
        it was made under (the caller compares fingerprints)."""
        wanted = set(keys)
        if not wanted:
            return {}
        digests = {digest for _, digest in wanted}
        rows = self.session.execute(
            sa.select(SignatureVerdictRow)
            .where(
                SignatureVerdictRow.group_id == group_id,
                SignatureVerdictRow.digest.in_(digests),
            )
            .order_by(SignatureVerdictRow.checked_at)
        ).scalars()
        found: dict[tuple[str, str], StoredVerdict] = {}
        for row in rows:
            if (row.image, row.digest) in wanted:
                found[(row.image, row.digest)] = _stored(row)
        return found


def _stored(row: SignatureVerdictRow) -> StoredVerdict:
    return StoredVerdict(row.image, row.digest, row.fingerprint, row.verdict, row.checked_at)
