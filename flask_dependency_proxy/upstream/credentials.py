"""Per-group upstream credentials, encrypted at rest with Fernet (AES-128-CBC with an
HMAC-SHA256, from ``cryptography``).

The keys, newest first, are ``DEPENDENCY_PROXY_CREDENTIAL_KEYS`` when set, else one key
derived from ``SECRET_KEY`` with HKDF-SHA256 (a fixed ``info`` string, so the derived
key is good for nothing but this). Values are encrypted with the newest key and
decrypted with any of them: rotating means putting a new key first, running
``flask dependency-proxy rotate-credentials`` (every row re-encrypted with the newest
key) and then dropping the old one. Keys derived from ``SECRET_KEY`` and its fallbacks
stay readable behind the configured keys, so moving from the derived key to keys of
one's own is the same rotation.

:func:`credential_id` tells credentials apart in cache keys (tokens, clients, confirmed
routes) without carrying the password.

Knows nothing of Flask or the database. Nothing here puts a secret or a key into an
exception, a log line or a ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import typing as t

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

#: HKDF ``info``: binds the derived key to this one use of ``SECRET_KEY``.
HKDF_INFO = b"flask-dependency-proxy/upstream-credentials/v1"


def credential_id(credentials: tuple[str, str] | None) -> str:
    """Tells credentials apart in a cache key without carrying the password."""
    if credentials is None:
        return ""
    username, password = credentials
    return f"{username}:{hashlib.sha256(password.encode()).hexdigest()[:32]}"


class CredentialError(Exception):
    """A stored credential cannot be decrypted: it was changed, or encrypted with a key
    that is no longer configured."""


def derive_key(secret_key: str | bytes) -> bytes:
    """The Fernet key (urlsafe base64 of 32 bytes) derived from ``secret_key``."""
    material = secret_key.encode() if isinstance(secret_key, str) else secret_key
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=HKDF_INFO).derive(material)
    return base64.urlsafe_b64encode(derived)


def parse_keys(name: str, value: t.Any) -> tuple[str, ...]:
    """Fernet keys from a config value: a list, a JSON list, or a comma-separated string.

    :param name: the config key, for the error message.
    :raises ValueError: naming the entry that is not a Fernet key (never its value).
    """
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise ValueError(f"{name} is not a valid JSON list of keys.") from None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    if not isinstance(value, list | tuple) or not value:
        raise ValueError(f"{name} must be a non-empty list of Fernet keys, newest first.")
    keys = []
    for position, key in enumerate(value, 1):
        if not isinstance(key, str) or not _is_fernet_key(key):
            raise ValueError(
                f"{name}: entry {position} is not a Fernet key (32 bytes in urlsafe"
                " base64, as `python -c 'from cryptography.fernet import Fernet;"
                " print(Fernet.generate_key().decode())'` prints)."
            )
        keys.append(key)
    return tuple(keys)


def _is_fernet_key(key: str) -> bool:
    try:
        return len(base64.urlsafe_b64decode(key.encode("ascii"))) == 32
    except (binascii.Error, ValueError):
        return False


class CredentialCipher:
    """Encrypts with the newest key, decrypts with any.

    :param keys: Fernet keys, newest first.
    """

    def __init__(self, keys: t.Sequence[str | bytes]) -> None:
        if not keys:
            raise ValueError("at least one key is needed")
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    @classmethod
    def from_secrets(
        cls, secret_keys: t.Sequence[str | bytes], credential_keys: t.Sequence[str] | None = None
    ) -> CredentialCipher:
        """The cipher of an application.

        :param secret_keys: ``SECRET_KEY`` then its fallbacks.
        :param credential_keys: ``DEPENDENCY_PROXY_CREDENTIAL_KEYS``, newest first; when
            given, new values are encrypted with its first key.
        """
        derived = [derive_key(secret) for secret in secret_keys if secret]
        return cls([*(credential_keys or ()), *derived])

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"

    def encrypt(self, secret: str) -> bytes:
        return self._fernet.encrypt(secret.encode())

    def decrypt(self, token: bytes) -> str:
        """:raises CredentialError: the token was changed or no configured key opens it."""
        try:
            return self._fernet.decrypt(bytes(token)).decode()
        except (InvalidToken, UnicodeDecodeError):
            raise CredentialError(
                "a stored upstream credential cannot be decrypted: it was changed, or the key"
                " it was encrypted with is no longer in DEPENDENCY_PROXY_CREDENTIAL_KEYS"
                " (nor derived from SECRET_KEY or SECRET_KEY_FALLBACKS)"
            ) from None

    def rotate(self, token: bytes) -> bytes:
        """``token`` re-encrypted with the newest key.

        :raises CredentialError: as :meth:`decrypt`.
        """
        try:
            return self._fernet.rotate(bytes(token))
        except InvalidToken:
            raise CredentialError(
                "a stored upstream credential cannot be decrypted with any configured key"
            ) from None
