"""Why a signature is not accepted. Every check raises a :class:`SignatureError`; the
verifier turns its message into an invalid verdict's reason, so bad input from a
registry never escapes as an exception.
"""

from __future__ import annotations


class SignatureError(ValueError):
    """A signature that does not count, with the reason as its message."""


class SignatureFormatError(SignatureError):
    """A signature, certificate, log entry or bundle that cannot be read as its spec says."""


class CertificateError(SignatureError):
    """A certificate that does not chain to a trusted root, may not sign, or was issued
    to nobody the policy trusts."""


class LogError(SignatureError):
    """A log entry that the configured logs do not vouch for, or that logs something else."""


class MismatchError(SignatureError):
    """A signature that verifies but is for something else: another digest, another key."""
