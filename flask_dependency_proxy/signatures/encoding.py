"""The few encodings signatures travel in: strict base64, sha256 digests, the RFC 8785
canonical JSON of a Rekor SET, and one DER string.

Every decoder raises :class:`~.errors.SignatureFormatError` on bad input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import typing as t

from .errors import SignatureFormatError


def b64decode(text: object, *, what: str) -> bytes:
    """Standard padded base64, as Go's ``StdEncoding`` reads it: line breaks are ignored
    (an RSA signature made by openssl is wrapped at 76 columns), anything else outside
    the alphabet is an error."""
    if not isinstance(text, str):
        raise SignatureFormatError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text.replace("\r", "").replace("\n", ""), validate=True)
    except (binascii.Error, ValueError) as error:
        raise SignatureFormatError(f"{what} is not valid base64") from error


def sha256_digest(data: bytes) -> str:
    """The OCI digest string of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def json_object(data: bytes | str, *, what: str) -> dict[str, t.Any]:
    """``data`` parsed as one JSON object."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise SignatureFormatError(f"{what} is not JSON") from error
    if not isinstance(value, dict):
        raise SignatureFormatError(f"{what} is not a JSON object")
    return value


def canonical_json(value: t.Mapping[str, object]) -> bytes:
    """RFC 8785 canonical JSON of an object of strings and integers, which is all a Rekor
    SET's payload holds: keys sorted, no whitespace, strings escaped only where JSON
    must (the spec sorts keys by UTF-16 code units; these keys are ASCII)."""
    for key, item in value.items():
        if not isinstance(key, str) or not (
            isinstance(item, str) or (isinstance(item, int) and not isinstance(item, bool))
        ):
            raise SignatureFormatError("the log entry has a field that is not a string or integer")
        if isinstance(item, int) and abs(item) > 2**53:
            raise SignatureFormatError("the log entry has an integer JSON cannot carry")
    return json.dumps(
        dict(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode()


def der_utf8_string(data: bytes) -> str:
    """The text of a DER ``UTF8String`` (the v2 Fulcio extensions wrap their values so)."""
    if len(data) < 2 or data[0] != 0x0C:
        raise SignatureFormatError("not a DER UTF8String")
    length, offset = data[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or len(data) < 2 + count:
            raise SignatureFormatError("bad DER length")
        length, offset = int.from_bytes(data[2 : 2 + count], "big"), 2 + count
    if len(data) != offset + length:
        raise SignatureFormatError("bad DER length")
    try:
        return data[offset:].decode("utf-8")
    except UnicodeDecodeError as error:
        raise SignatureFormatError("not UTF-8") from error
