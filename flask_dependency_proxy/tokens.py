"""Registry bearer tokens: signed, short-lived, naming a principal and never a secret."""

from __future__ import annotations

import dataclasses
import time
import typing as t

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

#: Separates registry tokens from every other use of the application's secret key.
_SALT = "flask-dependency-proxy.registry-token"


@dataclasses.dataclass(frozen=True)
class TokenClaims:
    subject: str
    issued_at: int
    expires_at: int


class InvalidToken(Exception):
    """The token is malformed, tampered with, signed with another key, or expired."""


class TokenIssuer:
    """Signs and verifies registry tokens with a key derived from the app's secret.

    :param secret_keys: the current secret first, then old ones still accepted
        (``SECRET_KEY_FALLBACKS``), so rotating the secret does not log everyone out at once.
    :param ttl_seconds: lifetime of a token.
    """

    def __init__(
        self,
        secret_keys: t.Sequence[str | bytes],
        *,
        ttl_seconds: int,
        clock: t.Callable[[], float] = time.time,
    ) -> None:
        if not secret_keys or not secret_keys[0]:
            raise ValueError("The application needs a SECRET_KEY to sign registry tokens.")
        keys = [k.encode() if isinstance(k, str) else k for k in reversed(secret_keys)]
        self._serializer = URLSafeTimedSerializer(keys, salt=_SALT)
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def issue(self, subject: str) -> tuple[str, TokenClaims]:
        now = int(self._clock())
        claims = TokenClaims(subject=subject, issued_at=now, expires_at=now + self.ttl_seconds)
        token = self._serializer.dumps({"sub": subject, "exp": claims.expires_at})
        return token, claims

    def verify(self, token: str) -> TokenClaims:
        """:raises InvalidToken: unless the token is genuine and not expired."""
        if not token or len(token) > 4096:
            raise InvalidToken("malformed token")
        try:
            payload, signed_at = self._serializer.loads(
                token, max_age=self.ttl_seconds, return_timestamp=True
            )
        except SignatureExpired:
            raise InvalidToken("token expired") from None
        except BadSignature:
            raise InvalidToken("bad token signature") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("sub"), str):
            raise InvalidToken("malformed token payload")
        expires_at = payload.get("exp")
        if not isinstance(expires_at, int) or expires_at <= self._clock():
            raise InvalidToken("token expired")
        return TokenClaims(
            subject=payload["sub"], issued_at=int(signed_at.timestamp()), expires_at=expires_at
        )
