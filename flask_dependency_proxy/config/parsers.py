"""Parsers of configuration values: each takes the key (for its error message) and the
value as ``app.config`` holds it (text from the environment, or the Python value a host
set) and returns the value the extension uses, or raises :class:`ConfigError` naming the
key and what it accepts.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import typing as t
from urllib.parse import urlsplit

from ..upstream.credentials import parse_keys


class ConfigError(ValueError):
    """A ``DEPENDENCY_PROXY_*`` key has a value the extension cannot use."""


#: ``parse(key, value)``: the value the extension uses.
Parser = t.Callable[[str, t.Any], t.Any]

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def boolean(key: str, value: t.Any) -> bool:
    """``True``/``False``, or their words in text (``true``, ``on``, ``1``, ...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ConfigError(f"{key} must be true or false, not {value!r}.")


def number(kind: type[int] | type[float], minimum: float) -> Parser:
    """A number of ``kind`` (or its text), at least ``minimum``; never a boolean."""

    def parse(key: str, value: t.Any) -> t.Any:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, not {value!r}.")
        try:
            parsed = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, not {value!r}.") from None
        if parsed < minimum:
            raise ConfigError(f"{key} must be at least {minimum}, not {value!r}.")
        return parsed

    return parse


def optional(parse: Parser) -> Parser:
    """``parse``, with ``None`` and empty text meaning ``None`` (the key is unset)."""
    return lambda key, value: None if value in (None, "") else parse(key, value)


def http_url(key: str, value: t.Any, *, credentials_go: str | None = None) -> str:
    """An http(s) URL without query, fragment or credentials, without a trailing ``/``.

    :param credentials_go: where credentials belong instead, for the error message.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a URL string, not {value!r}.")
    parts = urlsplit(value)
    if "@" in parts.netloc:
        # Never quoted: the URL holds a secret, which would be logged and shown to
        # every group owner with the upstream's URL.
        instead = f"; set {credentials_go} instead" if credentials_go else ""
        raise ConfigError(f"{key} must not carry credentials (user:password@host){instead}.")
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"{key} must be an http:// or https:// URL, not {value!r}.")
    if parts.query or parts.fragment:
        raise ConfigError(f"{key} must not have a query or fragment: {value!r}.")
    return value.rstrip("/")


def port(key: str, value: t.Any) -> int:
    """A TCP port number."""
    parsed = number(int, 1)(key, value)
    if parsed > 65535:
        raise ConfigError(f"{key} must be a TCP port (1 to 65535), not {value!r}.")
    return t.cast(int, parsed)


def text(what: str) -> Parser:
    """Text that is not blank; ``what`` names it in the error message."""

    def parse(key: str, value: t.Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{key} must be {what}, not {value!r}.")
        return value

    return parse


def folder(key: str, value: t.Any) -> str:
    """A folder path (text or path-like), as text."""
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise ConfigError(f"{key} must be a folder path, not {value!r}.")
    return os.fspath(value)


_MIN_CHUNK = 4096
_MAX_CHUNK = 64 * 1024 * 1024


def chunk_size(key: str, value: t.Any) -> int:
    """``0`` (the server's file wrapper) or a write size between 4 KiB and 64 MiB."""
    size = number(int, 0)(key, value)
    if size and not _MIN_CHUNK <= size <= _MAX_CHUNK:
        raise ConfigError(
            f"{key} must be 0 (sendfile) or between {_MIN_CHUNK} and {_MAX_CHUNK} bytes, "
            f"not {value!r}."
        )
    return t.cast(int, size)


def choice(*allowed: str) -> Parser:
    """One of ``allowed`` in any case, lower-cased."""

    def parse(key: str, value: t.Any) -> str:
        if not isinstance(value, str) or value.lower() not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, not {value!r}.")
        return value.lower()

    return parse


def location(key: str, value: t.Any) -> str:
    """A URL path that starts and ends with ``/`` (an nginx internal location)."""
    if not isinstance(value, str) or not value.startswith("/") or not value.endswith("/"):
        raise ConfigError(f"{key} must be a path that starts and ends with '/', not {value!r}.")
    return value


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_KEY_PREFIX = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_REGION = re.compile(r"[a-z0-9-]{1,64}")


def s3_url(key: str, value: t.Any) -> str:
    """``s3://BUCKET`` or ``s3://BUCKET/PREFIX``, normalised without a trailing ``/``."""
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be an s3://BUCKET/PREFIX URL, not {value!r}.")
    parts = urlsplit(value)
    prefix = parts.path.strip("/")
    if (
        parts.scheme != "s3"
        or not _BUCKET.fullmatch(parts.netloc)
        or parts.query
        or parts.fragment
        or (prefix and (not _KEY_PREFIX.fullmatch(prefix) or ".." in prefix.split("/")))
    ):
        raise ConfigError(
            f"{key} must be s3://BUCKET or s3://BUCKET/PREFIX (a valid bucket name, a"
            f" prefix of letters, digits, '.', '_', '-' and '/'), not {value!r}."
        )
    return f"s3://{parts.netloc}/{prefix}" if prefix else f"s3://{parts.netloc}"


def region(key: str, value: t.Any) -> str:
    """An object store's region name."""
    if not isinstance(value, str) or not _REGION.fullmatch(value):
        raise ConfigError(f"{key} must be a region name such as 'us-east-1', not {value!r}.")
    return value


def fernet_keys(key: str, value: t.Any) -> tuple[str, ...]:
    """Fernet keys, newest first: a list, its JSON text, or comma-separated text."""
    try:
        return parse_keys(key, value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


_IMPORT_PATH = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


def function(key: str, value: t.Any) -> t.Callable[[], t.Any]:
    """A callable, or the ``"module:function"`` text that names one (imported now, so a
    wrong name stops the start rather than the first page)."""
    if callable(value):
        return t.cast("t.Callable[[], t.Any]", value)
    module_name, _, attribute = value.partition(":") if isinstance(value, str) else ("", "", "")
    if not _IMPORT_PATH.fullmatch(module_name) or not _IMPORT_PATH.fullmatch(attribute):
        raise ConfigError(
            f"{key} must be a callable or a 'module:function' text naming one, not {value!r}."
        )
    try:
        found: t.Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{key}: cannot import {value!r}: {exc}.") from None
    if not callable(found):
        raise ConfigError(f"{key}: {value!r} is not callable.")
    return t.cast("t.Callable[[], t.Any]", found)


_BLOCK_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def block_name(key: str, value: t.Any) -> str:
    """The name of a Jinja block of the host's base template, other than the blocks the
    pages fill themselves (``title``, ``content``)."""
    if not isinstance(value, str) or not _BLOCK_NAME.fullmatch(value):
        raise ConfigError(f"{key} must be a Jinja block name such as 'head', not {value!r}.")
    if value in ("title", "content"):
        raise ConfigError(
            f"{key} must name a block other than 'title' and 'content', which the pages"
            f" fill themselves, not {value!r}."
        )
    return value


def readable_file(key: str, value: t.Any) -> str:
    """The path of a file the process can read (trust material the admin provides)."""
    if not isinstance(value, str) or not os.path.isfile(value) or not os.access(value, os.R_OK):
        raise ConfigError(f"{key} must name a readable file, not {value!r}.")
    return value


def readable_files(key: str, value: t.Any) -> tuple[str, ...]:
    """Readable files: a list, or comma-separated paths."""
    names = value.split(",") if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)):
        raise ConfigError(f"{key} must be a list of file paths, not {value!r}.")
    return tuple(readable_file(key, name.strip()) for name in names if str(name).strip())


def signers_document(key: str, value: t.Any) -> dict[str, t.Any]:
    """Trusted signers as the signature policy API takes them, a JSON object (or its
    text): ``{"keys": [{"name", "pem", "images"}], "identities": [{"issuer", "subject",
    "images"}], "index_rule"}``. A key's ``pem`` is the PEM text or a readable file's
    path, read here. The rest is checked with the policy (:func:`..cache.signing.
    normalize_policy`)."""
    document = value
    if isinstance(value, str):
        try:
            document = json.loads(value)
        except ValueError as error:
            raise ConfigError(f"{key} must be a JSON object: {error}.") from None
    if not isinstance(document, dict):
        raise ConfigError(f"{key} must be a JSON object with keys and identities.")
    keys = document.get("keys") or []
    if not isinstance(keys, list) or not all(isinstance(k, dict) for k in keys):
        raise ConfigError(f"{key}: keys must be a list of objects.")
    resolved = []
    for number, signer in enumerate(keys, 1):
        pem = signer.get("pem")
        if isinstance(pem, str) and "-----BEGIN" not in pem:
            path = readable_file(f"{key} (key {number}'s pem)", pem)
            with open(path, encoding="utf-8") as file:
                pem = file.read()
        resolved.append({**signer, "pem": pem})
    return {**document, "keys": resolved}
