"""The answer to "who signed this digest?": one small value the cache can keep per
digest and policy version, so a warm pull costs a lookup, not a verification.
"""

from __future__ import annotations

import dataclasses
import enum
import json


class Status(enum.StrEnum):
    """What the verifier found for a digest."""

    #: A signature from a signer the policy trusts verifies for the exact digest.
    VERIFIED = "verified"
    #: Nothing that claims to be a signature was found.
    UNSIGNED = "unsigned"
    #: Signatures were found, and none of them verifies for a trusted signer.
    INVALID = "invalid"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The result for one digest under one policy.

    :param signer: who signed, for a verified digest: a key's name, or the certificate's
        identity as ``subject (issuer)``.
    :param reason: why not, for an unsigned or invalid digest (the distinct reasons of
        every signature tried, joined by ``; ``).
    :param signed_at: the signing time a transparency log vouches for (Unix seconds),
        when one did.
    """

    status: Status
    signer: str | None = None
    reason: str = ""
    signed_at: int | None = None

    def to_json(self) -> str:
        """The verdict as a small JSON object, to store beside the digest."""
        return json.dumps(
            {
                "status": self.status.value,
                "signer": self.signer,
                "reason": self.reason,
                "signed_at": self.signed_at,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Verdict:
        """A verdict stored by :meth:`to_json`."""
        data = json.loads(text)
        signed_at = data.get("signed_at")
        return cls(
            status=Status(data["status"]),
            signer=data.get("signer"),
            reason=str(data.get("reason", "")),
            signed_at=int(signed_at) if signed_at is not None else None,
        )


@dataclasses.dataclass(frozen=True)
class Accepted:
    """One signature that counts: by whom, and when a log says it was made."""

    signer: str
    signed_at: int | None = None
