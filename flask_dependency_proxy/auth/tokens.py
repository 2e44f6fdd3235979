"""Signed tokens that name a principal and never a secret.

- Registry bearer tokens: short-lived, sent with every registry request.
- Refresh tokens (the OAuth2 ``refresh_token``, docker's "identity token"): long-lived,
  good only at ``/jwt/auth`` for new registry tokens, so a client that logged in once
  never sends its password again.

Each kind has its own salt: one is never accepted as the other.
"""

from __future__ import annotations

import dataclasses
import time
import typing as t

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

#: Separates registry tokens from every other use of the application's secret key.
_SALT = "flask-dependency-proxy.registry-token"
#: Separates refresh tokens from registry tokens and every other use of the secret key.
_REFRESH_SALT = "flask-dependency-proxy.refresh-token"
#: Longest token read; anything longer is refused unread.
MAX_TOKEN_LENGTH = 4096


@dataclasses.dataclass(frozen=True)
class TokenClaims:
    subject: str
    issued_at: int
    expires_at: int


class InvalidToken(Exception):
    """The token is malformed, tampered with, signed with another key, or expired."""


class _SignedTokens:
    """Signs and verifies ``{"sub", "exp"}`` payloads with keys derived from the app's
    secret and one salt."""

    def __init__(
        self,
        secret_keys: t.Sequence[str | bytes],
        *,
        salt: str,
        ttl_seconds: int,
        clock: t.Callable[[], float],
    ) -> None:
        if not secret_keys or not secret_keys[0]:
            raise ValueError("The application needs a SECRET_KEY to sign registry tokens.")
        self._secret_keys = tuple(secret_keys)
        keys = [k.encode() if isinstance(k, str) else k for k in reversed(secret_keys)]
        self._serializer = URLSafeTimedSerializer(keys, salt=salt)
        self.ttl_seconds = ttl_seconds
        self._clock = clock

    def issue(self, subject: str) -> tuple[str, TokenClaims]:
        now = int(self._clock())
        claims = TokenClaims(subject=subject, issued_at=now, expires_at=now + self.ttl_seconds)
        token = self._serializer.dumps({"sub": subject, "exp": claims.expires_at})
        return token, claims

    def verify(self, token: str) -> TokenClaims:
        """:raises InvalidToken: unless the token is genuine and not expired."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
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


class TokenIssuer(_SignedTokens):
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
        super().__init__(secret_keys, salt=_SALT, ttl_seconds=ttl_seconds, clock=clock)
        self._refresh: dict[int, RefreshTokenIssuer] = {}

    def refresh_tokens(self, ttl_seconds: int) -> RefreshTokenIssuer:
        """Refresh tokens of this lifetime, signed with the same secret and fallbacks."""
        issuer = self._refresh.get(ttl_seconds)
        if issuer is None:
            issuer = RefreshTokenIssuer(
                self._secret_keys, ttl_seconds=ttl_seconds, clock=self._clock
            )
            self._refresh[ttl_seconds] = issuer
        return issuer


class RefreshTokenIssuer(_SignedTokens):
    """Signs and verifies refresh tokens.

    A refresh token only names the principal's subject: whoever redeems it must resolve
    the subject again (``HostAdapter.load_principal``), so a blocked user or a revoked
    token stops refreshing at once. Nothing in it changes with a password, so a password
    change ends no refresh token; blocking the user, revoking the token, or rotating
    ``SECRET_KEY`` without a fallback does.

    :param secret_keys: as for :class:`TokenIssuer`.
    :param ttl_seconds: lifetime of a refresh token.
    """

    def __init__(
        self,
        secret_keys: t.Sequence[str | bytes],
        *,
        ttl_seconds: int,
        clock: t.Callable[[], float] = time.time,
    ) -> None:
        super().__init__(secret_keys, salt=_REFRESH_SALT, ttl_seconds=ttl_seconds, clock=clock)
