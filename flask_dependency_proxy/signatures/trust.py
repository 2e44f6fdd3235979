"""What a policy trusts: signers (public keys, keyless identities) and the trust
material keyless signatures are checked against (certificate roots, transparency log
keys), read from files the admin provides: a Sigstore ``trusted_root.json`` or PEM.

Nothing is fetched: a root that changes reaches the cache as a new file and a new
:attr:`TrustPolicy.fingerprint`, which is what cached verdicts are keyed by.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import re
import typing as t

from cryptography import x509

from .encoding import b64decode, json_object
from .errors import SignatureFormatError
from .keys import PublicKey, key_id, load_public_key, spki_der

#: The OIDC issuer of a Fulcio certificate: v2 (DER UTF8String) and v1 (raw ASCII).
FULCIO_ISSUER_V2 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.8")
FULCIO_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")


def _pattern(text: str) -> re.Pattern[str]:
    """A glob where ``*`` stands for any run of characters (``/`` included) and every
    other character for itself; ``?`` and ``[`` are literal, as URLs need."""
    return re.compile(".*".join(re.escape(part) for part in text.split("*")), re.DOTALL)


@dataclasses.dataclass(frozen=True)
class KeySigner:
    """A trusted public key (a cosign key pair's ``cosign.pub``).

    :param name: how verdicts name the signer.
    """

    name: str
    key: PublicKey = dataclasses.field(compare=False, repr=False)

    @classmethod
    def from_pem(cls, data: bytes, *, name: str | None = None) -> KeySigner:
        """A signer from a PEM public key (ECDSA, RSA or Ed25519); named by its
        fingerprint unless ``name`` is given."""
        key = load_public_key(data)
        return cls(name=name or f"key SHA256:{key_id(key).hex()[:16]}", key=key)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hex sha256 of the DER SubjectPublicKeyInfo."""
        return key_id(self.key).hex()


@dataclasses.dataclass(frozen=True)
class IdentitySigner:
    """A trusted keyless identity: the certificate's OIDC issuer and its subject (SAN
    email, URI or DNS name), each exact or a ``*`` pattern, e.g.
    ``https://github.com/org/repo/.github/workflows/release.yml@refs/tags/*``.

    :param issuer: ``None`` for a certificate of the admin's own PKI, which has no
        issuer extension; use it only with roots that issue nothing else.
    """

    issuer: str | None
    subject: str

    def matches(self, issuer: str | None, subjects: t.Iterable[str]) -> str | None:
        """The first of ``subjects`` this identity accepts from a certificate issued
        for ``issuer``; ``None`` when it accepts none."""
        if self.issuer is not None:
            if issuer is None or not _pattern(self.issuer).fullmatch(issuer):
                return None
        wanted = _pattern(self.subject)
        return next((subject for subject in subjects if wanted.fullmatch(subject)), None)


@dataclasses.dataclass(frozen=True)
class CertificateAuthority:
    """Roots that keyless certificates chain to, with the intermediates they issued,
    trusted for signing times in ``[valid_from, valid_until]`` (open ends: always)."""

    roots: tuple[x509.Certificate, ...]
    intermediates: tuple[x509.Certificate, ...] = ()
    valid_from: datetime.datetime | None = None
    valid_until: datetime.datetime | None = None

    def valid_at(self, at: datetime.datetime) -> bool:
        """Whether the root vouches for certificates used at ``at``."""
        return (self.valid_from is None or self.valid_from <= at) and (
            self.valid_until is None or at <= self.valid_until
        )


@dataclasses.dataclass(frozen=True)
class LogKey:
    """A transparency log's public key, by the log ID its entries name."""

    log_id: bytes
    key: PublicKey = dataclasses.field(compare=False, repr=False)
    valid_from: datetime.datetime | None = None
    valid_until: datetime.datetime | None = None

    def valid_at(self, at: datetime.datetime) -> bool:
        return (self.valid_from is None or self.valid_from <= at) and (
            self.valid_until is None or at <= self.valid_until
        )


def _time(window: object, name: str) -> datetime.datetime | None:
    if not isinstance(window, dict) or window.get(name) is None:
        return None
    text = window[name]
    try:
        value = datetime.datetime.fromisoformat(str(text))
    except ValueError as error:
        raise SignatureFormatError(f"trusted root: bad time {text!r}") from error
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def _certificates(data: bytes, what: str) -> tuple[x509.Certificate, ...]:
    if not data.strip():
        return ()
    try:
        return tuple(x509.load_pem_x509_certificates(data))
    except ValueError as error:
        raise SignatureFormatError(f"{what} is not PEM certificates") from error


@dataclasses.dataclass(frozen=True)
class TrustRoot:
    """Certificate authorities for keyless and PKI signatures, and transparency log keys.

    When it names a log key, every signature must carry a valid entry of that log:
    the entry's time is the one certificates are checked at.
    """

    authorities: tuple[CertificateAuthority, ...] = ()
    logs: tuple[LogKey, ...] = ()

    @classmethod
    def from_pem(
        cls,
        *,
        roots: bytes = b"",
        intermediates: bytes = b"",
        log_keys: t.Sequence[bytes] = (),
    ) -> TrustRoot:
        """Roots and intermediates as PEM certificates (e.g. ``fulcio_v1.crt.pem``, or
        an own PKI's), Rekor public keys as PEM (``rekor.pub``)."""
        anchors = _certificates(roots, "roots")
        authorities = (
            (CertificateAuthority(anchors, _certificates(intermediates, "intermediates")),)
            if anchors
            else ()
        )
        logs = tuple(LogKey(key_id(key), key) for key in map(load_public_key, log_keys))
        return cls(authorities, logs)

    @classmethod
    def from_trusted_root_json(cls, data: bytes) -> TrustRoot:
        """A Sigstore trusted root (``application/vnd.dev.sigstore.trustedroot+json``):
        its certificate authorities and transparency logs. CT logs and timestamp
        authorities are not used."""
        document = json_object(data, what="trusted root")
        try:
            authorities = []
            for entry in document.get("certificateAuthorities") or []:
                chain = [
                    x509.load_der_x509_certificate(b64decode(c["rawBytes"], what="certificate"))
                    for c in entry["certChain"]["certificates"]
                ]
                if not chain:
                    continue
                authorities.append(
                    CertificateAuthority(
                        roots=(chain[-1],),
                        intermediates=tuple(chain[:-1]),
                        valid_from=_time(entry.get("validFor"), "start"),
                        valid_until=_time(entry.get("validFor"), "end"),
                    )
                )
            logs = []
            for entry in document.get("tlogs") or []:
                public = entry["publicKey"]
                logs.append(
                    LogKey(
                        log_id=b64decode(entry["logId"]["keyId"], what="log ID"),
                        key=load_public_key(b64decode(public["rawBytes"], what="log key")),
                        valid_from=_time(public.get("validFor"), "start"),
                        valid_until=_time(public.get("validFor"), "end"),
                    )
                )
        except (KeyError, TypeError, ValueError) as error:
            raise SignatureFormatError(f"trusted root: {error}") from error
        return cls(tuple(authorities), tuple(logs))

    def log(self, log_id: bytes, at: datetime.datetime) -> LogKey | None:
        """The key of the log ``log_id``, if trusted at ``at``."""
        return next((log for log in self.logs if log.log_id == log_id and log.valid_at(at)), None)

    def describe(self) -> dict[str, t.Any]:
        """Everything trusted, in a stable form for :attr:`TrustPolicy.fingerprint`."""

        def der(cert: x509.Certificate) -> str:
            return hashlib.sha256(cert.tbs_certificate_bytes + cert.signature).hexdigest()

        def window(item: CertificateAuthority | LogKey) -> list[str | None]:
            return [
                item.valid_from.isoformat() if item.valid_from else None,
                item.valid_until.isoformat() if item.valid_until else None,
            ]

        return {
            "authorities": [
                [[der(c) for c in a.roots], [der(c) for c in a.intermediates], window(a)]
                for a in self.authorities
            ],
            "logs": [[log.log_id.hex(), spki_der(log.key).hex(), window(log)] for log in self.logs],
        }


@dataclasses.dataclass(frozen=True)
class TrustPolicy:
    """Whose signatures count: one of ``keys`` or ``identities`` must have signed.

    :param roots: the certificate authorities and log keys; needed for identities, and
        for keys when their signatures must be in a transparency log.
    :param predicate_types: the in-toto predicate types a bundle may attest; ``None``
        for any (cosign v3 signs with ``https://sigstore.dev/cosign/sign/v1``).
    """

    keys: tuple[KeySigner, ...] = ()
    identities: tuple[IdentitySigner, ...] = ()
    roots: TrustRoot | None = None
    predicate_types: tuple[str, ...] | None = None

    @functools.cached_property
    def fingerprint(self) -> str:
        """A hex digest of everything this policy trusts: a cached verdict is good for
        as long as the fingerprint it was made under."""
        description = {
            "keys": sorted([signer.name, signer.fingerprint] for signer in self.keys),
            "identities": sorted([i.issuer or "", i.subject] for i in self.identities),
            "roots": self.roots.describe() if self.roots else None,
            "predicate_types": sorted(self.predicate_types)
            if self.predicate_types is not None
            else None,
        }
        return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()
