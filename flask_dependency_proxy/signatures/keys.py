"""Public keys and the signature schemes cosign and Sigstore use with them.

A cosign signature carries no algorithm identifier: the key decides. ECDSA signs the
SHA-2 digest that matches its curve (P-256 with SHA-256, cosign's default), RSA uses
PKCS#1 v1.5 with SHA-256, Ed25519 signs the message itself.
"""

from __future__ import annotations

import hashlib
import typing as t

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from .errors import SignatureFormatError

#: The public keys a signer, a Fulcio leaf or a transparency log may hold.
PublicKey: t.TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey

_CURVE_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}


def supported_key(key: object) -> PublicKey:
    """``key`` when it is of a kind signatures here use, else a format error."""
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _CURVE_HASHES:
        return key
    if isinstance(key, rsa.RSAPublicKey) and key.key_size >= 2048:
        return key
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    raise SignatureFormatError("unsupported public key type (use ECDSA, RSA 2048+ or Ed25519)")


def load_public_key(data: bytes) -> PublicKey:
    """A public key from PEM (``-----BEGIN PUBLIC KEY-----``) or DER SubjectPublicKeyInfo."""
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_public_key(data)
        else:
            key = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as error:
        raise SignatureFormatError("not a public key in PEM or DER") from error
    return supported_key(key)


def spki_der(key: PublicKey) -> bytes:
    """The DER SubjectPublicKeyInfo, the form keys are compared and identified in."""
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_id(key: PublicKey) -> bytes:
    """sha256 of the DER SubjectPublicKeyInfo: a Rekor log's ID, a key's fingerprint."""
    return hashlib.sha256(spki_der(key)).digest()


def signature_verifies(key: PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` is ``key``'s over ``message``."""
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, message, ec.ECDSA(_CURVE_HASHES[key.curve.name]()))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, message, padding.PKCS1v15(), hashes.SHA256())
        else:
            key.verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
