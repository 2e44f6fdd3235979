"""Secrets the platform hands out: personal access, deploy and CI job tokens.

Each secret is random (``secrets.token_urlsafe``) and starts with a prefix that
names its kind, so a leaked token is easy to recognise in logs and scanners. Only
a SHA-256 digest is stored: the secrets carry 256 bits of entropy, so a slow
password hash would add cost without adding safety.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

PERSONAL_ACCESS_TOKEN_PREFIX = "dppat-"
DEPLOY_TOKEN_PREFIX = "dpdt-"
JOB_TOKEN_PREFIX = "dpjob-"

#: Scopes a personal access token may carry. ``api`` implies every other one.
PERSONAL_ACCESS_TOKEN_SCOPES = (
    "api",
    "read_api",
    "read_user",
    "read_repository",
    "write_repository",
    "read_registry",
    "write_registry",
)
#: Scopes a group deploy token may carry.
DEPLOY_TOKEN_SCOPES = (
    "read_repository",
    "read_registry",
    "write_registry",
    "read_package_registry",
    "write_package_registry",
)
#: What the Dependency Proxy asks of a token (or ``api`` for a personal one).
REGISTRY_SCOPES = frozenset({"read_registry", "write_registry"})


def new_secret(prefix: str) -> str:
    """Return a fresh secret; the caller shows it once and stores only its digest."""
    return prefix + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    """Return the hex SHA-256 digest under which a secret is stored and looked up."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def matches(secret: str, stored_digest: str) -> bool:
    """Compare a presented secret with a stored digest in constant time."""
    return hmac.compare_digest(digest(secret), stored_digest)


def parse_scopes(text: str, allowed: tuple[str, ...]) -> frozenset[str]:
    """Split a comma-separated scope list, rejecting unknown names.

    :raises ValueError: naming the unknown scopes and the allowed ones.
    """
    scopes = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = scopes - set(allowed)
    if unknown:
        raise ValueError(
            f"Unknown scope(s) {', '.join(sorted(unknown))}; choose from {', '.join(allowed)}."
        )
    if not scopes:
        raise ValueError(f"Give at least one scope; choose from {', '.join(allowed)}.")
    return scopes
