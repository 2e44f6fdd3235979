"""One verdict for one digest: every signature found for it (the ``.sig`` tag's layers,
the bundles among its referrers) is checked against the policy until one counts.

One signature from a trusted signer is enough; a digest with signatures of which none
counts is invalid, with their reasons; a digest with none is unsigned. The verifier
never raises for what a registry served: a malformed signature is a reason, not an
error.
"""

from __future__ import annotations

import datetime
import functools
import typing as t

from cryptography.exceptions import UnsupportedAlgorithm

from .bundles import verify_bundle
from .errors import SignatureError
from .simplesigning import SignatureLayer, verify_layer
from .trust import TrustPolicy
from .verdict import Accepted, Status, Verdict

#: A verdict's reason is kept short enough to show on a page and in a 403 answer.
MAX_REASON = 500


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class SignatureVerifier:
    """Verifies digests against one :class:`~.trust.TrustPolicy`, offline.

    :param now: the clock for signatures no transparency log dates (keys without a log,
        an own PKI): their certificates must be valid now.
    """

    def __init__(
        self, policy: TrustPolicy, *, now: t.Callable[[], datetime.datetime] = _utcnow
    ) -> None:
        self.policy = policy
        self._now = now

    def verify(
        self,
        digest: str,
        *,
        layers: t.Iterable[SignatureLayer] = (),
        bundles: t.Iterable[bytes] = (),
    ) -> Verdict:
        """The verdict for the manifest whose exact bytes hash to ``digest``, given the
        layers of its ``.sig`` tag (with their blobs) and the bundle blobs of its
        referrers."""
        now = self._now()
        checks: list[t.Callable[[], Accepted]] = [
            functools.partial(verify_layer, layer, digest, self.policy, now=now)
            for layer in layers
            if layer.claims_signature
        ]
        checks += [functools.partial(verify_bundle, raw, digest, self.policy) for raw in bundles]
        if not checks:
            return Verdict(Status.UNSIGNED, reason="no signature found")
        reasons: list[str] = []
        for check in checks:
            try:
                accepted = check()
            except SignatureError as error:
                reasons.append(str(error))
            except (ValueError, TypeError, KeyError, AttributeError, UnsupportedAlgorithm) as error:
                reasons.append(f"malformed signature: {error}")
            else:
                return Verdict(
                    Status.VERIFIED, signer=accepted.signer, signed_at=accepted.signed_at
                )
        reason = "; ".join(dict.fromkeys(reasons))
        if len(reason) > MAX_REASON:
            reason = reason[: MAX_REASON - 1] + "\u2026"
        return Verdict(Status.INVALID, reason=reason)
