"""Signing certificates: the path from a leaf to a configured root at a given time, and
the identity a Fulcio (or an own PKI's) leaf was issued for.

The path is built and checked by ``cryptography``'s X.509 verifier. Its web PKI
defaults want server or client authentication; a signing certificate has the
``codeSigning`` usage instead, so the extension policies are relaxed to what a signing
chain needs (CAs are CAs) and the usage is checked here, with Go's rule that cosign
follows: a certificate without an extended key usage allows any.
"""

from __future__ import annotations

import datetime
import functools
import importlib
import typing as t

import cryptography
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from .encoding import der_utf8_string
from .errors import CertificateError, SignatureFormatError
from .keys import PublicKey, supported_key
from .trust import FULCIO_ISSUER_V1, FULCIO_ISSUER_V2, TrustPolicy

if t.TYPE_CHECKING:
    from cryptography.x509 import verification

#: Why a chain cannot be verified with the installed ``cryptography``: its X.509 verifier
#: with extension policies (the rules code-signing certificates need) came in version 45.
CHAIN_VERIFICATION_NEEDS = (
    "verifying certificate chains (keyless and PKI signers) needs cryptography >= 45"
    f" (installed: {cryptography.__version__}); public-key signers work without it"
)


def chain_verification_available() -> bool:
    """Whether the installed ``cryptography`` can verify certificate chains: the
    package's floor (41) is lower, for hosts that pin it; only keyless and PKI signers
    need more."""
    try:
        _verification()
    except CertificateError:
        return False
    return True


def _verification() -> t.Any:
    try:
        module = importlib.import_module("cryptography.x509.verification")
    except ImportError:
        raise CertificateError(CHAIN_VERIFICATION_NEEDS) from None
    if not hasattr(module, "ExtensionPolicy"):
        raise CertificateError(CHAIN_VERIFICATION_NEEDS)
    return module


def load_certificate(data: bytes) -> x509.Certificate:
    """One certificate from PEM or DER."""
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError as error:
        raise SignatureFormatError("not an X.509 certificate") from error


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (``dev.sigstore.cosign/chain``)."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise SignatureFormatError("not PEM certificates") from error


def public_key(certificate: x509.Certificate) -> PublicKey:
    """The leaf's key, if it is of a kind signatures use."""
    return supported_key(certificate.public_key())


def _is_ca(
    policy: verification.Policy, certificate: x509.Certificate, value: x509.BasicConstraints
) -> None:
    if not value.ca:
        raise ValueError("an issuer is not a CA")


def _may_sign_certificates(
    policy: verification.Policy, certificate: x509.Certificate, value: x509.KeyUsage | None
) -> None:
    if value is not None and not value.key_cert_sign:
        raise ValueError("an issuer's key usage does not allow signing certificates")


@functools.cache
def _policies() -> tuple[t.Any, t.Any]:
    """The extension rules of issuers and of the leaf: issuers must be CAs that may sign
    certificates; the leaf's usage is checked by :func:`_allows_code_signing`."""
    checks = _verification()
    issuers = (
        checks.ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, checks.Criticality.AGNOSTIC, _is_ca)
        .may_be_present(x509.KeyUsage, checks.Criticality.AGNOSTIC, _may_sign_certificates)
    )
    return issuers, checks.ExtensionPolicy.permit_all()


_SIGNING_USAGES = {ExtendedKeyUsageOID.CODE_SIGNING, ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE}


def _allows_code_signing(certificate: x509.Certificate) -> bool:
    try:
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return True
    return any(usage in _SIGNING_USAGES for usage in usages)


def verify_chain(
    leaf: x509.Certificate,
    intermediates: t.Sequence[x509.Certificate],
    roots: t.Sequence[x509.Certificate],
    *,
    at: datetime.datetime,
) -> list[x509.Certificate]:
    """The path from ``leaf`` through ``intermediates`` (untrusted, as the signature
    carries them) to one of ``roots``, every certificate valid at ``at``; raises
    :class:`CertificateError` when there is none or a certificate on it may not sign
    code."""
    if not roots:
        raise CertificateError("no root is configured for certificates")
    checks = _verification()
    issuers, leaves = _policies()
    verifier = (
        checks.PolicyBuilder()
        .store(checks.Store(list(roots)))
        .time(at)
        .extension_policies(ca_policy=issuers, ee_policy=leaves)
        .build_client_verifier()
    )
    try:
        path: list[x509.Certificate] = verifier.verify(leaf, list(intermediates)).chain
    except checks.VerificationError as error:
        raise CertificateError(
            f"the certificate does not chain to a trusted root: {error}"
        ) from error
    if not all(_allows_code_signing(certificate) for certificate in path):
        raise CertificateError("the certificate is not for code signing")
    return path


def identity(certificate: x509.Certificate) -> tuple[str | None, list[str]]:
    """The OIDC issuer (``None`` without the Fulcio extension) and the subjects (SAN
    emails, URIs and DNS names) a leaf was issued for."""
    issuers = []
    for oid, read in ((FULCIO_ISSUER_V2, der_utf8_string), (FULCIO_ISSUER_V1, _ascii)):
        try:
            extension = certificate.extensions.get_extension_for_oid(oid).value
        except x509.ExtensionNotFound:
            continue
        if not isinstance(extension, x509.UnrecognizedExtension):
            raise SignatureFormatError("unexpected issuer extension")
        issuers.append(read(extension.value))
    if len(set(issuers)) > 1:
        raise CertificateError("the certificate's two issuer extensions disagree")
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        names = x509.SubjectAlternativeName([])
    subjects = [
        *names.get_values_for_type(x509.RFC822Name),
        *names.get_values_for_type(x509.UniformResourceIdentifier),
        *names.get_values_for_type(x509.DNSName),
    ]
    return (issuers[0] if issuers else None), subjects


def _ascii(data: bytes) -> str:
    try:
        return data.decode("ascii")
    except UnicodeDecodeError as error:
        raise SignatureFormatError("the v1 issuer extension is not ASCII") from error


def trusted_identity(
    leaf: x509.Certificate,
    carried: t.Sequence[x509.Certificate],
    policy: TrustPolicy,
    *,
    at: datetime.datetime,
) -> str:
    """Who the policy trusts ``leaf`` as, at ``at``: its path to a configured root (with
    the intermediates the signature ``carried`` and the root's own) and an identity
    the policy names; the name for the verdict, ``subject (issuer)``."""
    authorities = [a for a in (policy.roots.authorities if policy.roots else ()) if a.valid_at(at)]
    if not authorities:
        raise CertificateError("no certificate root is configured for the signing time")
    failure: CertificateError | None = None
    for authority in authorities:
        try:
            verify_chain(leaf, [*carried, *authority.intermediates], authority.roots, at=at)
            break
        except CertificateError as error:
            failure = error
    else:
        assert failure is not None
        raise failure
    issuer, subjects = identity(leaf)
    for signer in policy.identities:
        subject = signer.matches(issuer, subjects)
        if subject is not None:
            return f"{subject} ({issuer})" if issuer else subject
    shown = ", ".join(subjects) or "no subject"
    raise CertificateError(f"the certificate's identity ({shown}, issuer {issuer}) is not trusted")
