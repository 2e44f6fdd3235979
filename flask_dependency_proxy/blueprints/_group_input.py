"""The rules of what an administrator sends about a group, read once for the pages' forms
and the REST API's JSON: cleanup days, the size limit, the upstream order, an upstream
credential, and the whole numbers of a query (page, days).

A form sends text (``"30"``, ``"20 GiB"``); JSON sends typed values (``30``, a number of
bytes, ``null``). Each rule reads both with the same bounds and says what is wrong in one
phrase (``problem``), which each surface puts in its own words: the page flashes it, the
API answers it per field (``{"errors": {field: problem}}``). Whether a value is allowed
beyond its syntax and bounds (a known upstream, a credential's length) is
:class:`~..admin.groups.GroupAdmin`'s to say.
"""

from __future__ import annotations

import dataclasses
import re
import typing as t

from werkzeug.datastructures import MultiDict

from ..cache.quota import MAX_GROUP_LIMIT_BYTES, parse_size
from ..models.group_settings import MAX_CLEANUP_DAYS, MIN_CLEANUP_DAYS

_DIGITS = re.compile(r"[0-9]{1,9}")

#: The two fields of an upstream credential, in a form and in JSON.
CREDENTIAL_FIELDS = ("username", "password")


class InvalidInput(ValueError):
    """Input that breaks a rule: ``message`` for the whole, ``errors`` per field."""

    def __init__(self, message: str, errors: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or {}


@dataclasses.dataclass(frozen=True)
class WholeNumber:
    """A whole number from ``low`` to ``high``, typed in a form or a query, or sent in JSON."""

    low: int
    high: int

    @property
    def problem(self) -> str:
        return f"must be a whole number from {self.low} to {self.high}"

    def from_text(self, raw: str) -> int | None:
        """The number of digits ``raw`` (nothing else, no sign); ``None`` if out of bounds."""
        if not _DIGITS.fullmatch(raw) or not self.low <= int(raw) <= self.high:
            return None
        return int(raw)

    def from_json(self, value: t.Any) -> int | None:
        """A JSON integer (not a boolean, not a string) in bounds; else ``None``."""
        if isinstance(value, bool) or not isinstance(value, int):
            return None
        return value if self.low <= value <= self.high else None


#: Days a cleanup policy keeps what the group has not pulled.
CLEANUP_DAYS = WholeNumber(MIN_CLEANUP_DAYS, MAX_CLEANUP_DAYS)

#: What is wrong with a size limit a form sends.
SIZE_LIMIT_TEXT_PROBLEM = (
    "must be a size such as 500 MiB or 20 GiB (bytes, KiB, MiB, GiB or TiB; at most"
    " 1024 TiB), or empty for no limit"
)
#: What is wrong with a size limit JSON sends.
SIZE_LIMIT_JSON_PROBLEM = (
    f"must be null (no limit) or a whole number of bytes from 1 to {MAX_GROUP_LIMIT_BYTES}"
)


def size_limit_from_text(raw: str) -> int | None:
    """``"20 GiB"`` in bytes; empty text is no limit (``None``).

    :raises InvalidInput: not a size, or out of bounds.
    """
    raw = raw.strip()
    if not raw:
        return None
    limit = parse_size(raw)
    if limit is None:
        raise InvalidInput(SIZE_LIMIT_TEXT_PROBLEM, {"size_limit": SIZE_LIMIT_TEXT_PROBLEM})
    return limit


def size_limit_from_json(value: t.Any) -> int | None:
    """A number of bytes; ``null`` is no limit (``None``).

    :raises InvalidInput: not an integer, or out of bounds.
    """
    if value is None:
        return None
    limit = WholeNumber(1, MAX_GROUP_LIMIT_BYTES).from_json(value)
    if limit is None:
        raise InvalidInput(SIZE_LIMIT_JSON_PROBLEM, {"limit_bytes": SIZE_LIMIT_JSON_PROBLEM})
    return limit


def settings_from_json(data: t.Any) -> dict[str, t.Any]:
    """A settings update (``enabled``, ``cleanup_policy``, ``quota``) as the keyword
    arguments of :meth:`~..admin.groups.GroupAdmin.update_settings`. Every field is
    optional, unknown ones are errors.

    :raises InvalidInput: not an object, bad or unknown fields (all of them named), or
        no field to change.
    """
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    errors: dict[str, str] = {}
    changes: dict[str, t.Any] = {}
    for key in data:
        if key not in ("enabled", "cleanup_policy", "quota"):
            errors[str(key)[:100]] = "unknown field"
    if "enabled" in data:
        if isinstance(data["enabled"], bool):
            changes["enabled"] = data["enabled"]
        else:
            errors["enabled"] = "must be true or false"
    if "cleanup_policy" in data:
        _cleanup_policy_from_json(data["cleanup_policy"], changes, errors)
    if "quota" in data:
        _quota_from_json(data["quota"], changes, errors)
    if errors:
        raise InvalidInput(f"invalid fields: {', '.join(sorted(errors))}", errors)
    if not changes:
        raise InvalidInput(
            "give at least one of enabled, cleanup_policy.enabled,"
            " cleanup_policy.days, quota.limit_bytes"
        )
    return changes


def _cleanup_policy_from_json(
    policy: t.Any, changes: dict[str, t.Any], errors: dict[str, str]
) -> None:
    """``{"enabled", "days"}`` into ``changes["cleanup_enabled"]`` and ``["cleanup_days"]``."""
    if not isinstance(policy, dict):
        errors["cleanup_policy"] = "must be an object with enabled and days"
        return
    for key in policy:
        if key not in ("enabled", "days"):
            errors[f"cleanup_policy.{str(key)[:100]}"] = "unknown field"
    if "enabled" in policy:
        if isinstance(policy["enabled"], bool):
            changes["cleanup_enabled"] = policy["enabled"]
        else:
            errors["cleanup_policy.enabled"] = "must be true or false"
    if "days" in policy:
        days = CLEANUP_DAYS.from_json(policy["days"])
        if days is None:
            errors["cleanup_policy.days"] = CLEANUP_DAYS.problem
        else:
            changes["cleanup_days"] = days


def _quota_from_json(quota: t.Any, changes: dict[str, t.Any], errors: dict[str, str]) -> None:
    """``{"limit_bytes": N}`` (``null`` lifts the limit) into ``changes["size_limit"]``."""
    if not isinstance(quota, dict):
        errors["quota"] = "must be an object with limit_bytes"
        return
    for key in quota:
        if key != "limit_bytes":
            errors[f"quota.{str(key)[:100]}"] = (
                "unknown field" if key not in ("used_bytes", "policy") else "cannot be set"
            )
    if "limit_bytes" not in quota:
        return
    try:
        changes["size_limit"] = size_limit_from_json(quota["limit_bytes"])
    except InvalidInput as exc:
        errors["quota.limit_bytes"] = exc.message


def exact_fields(data: t.Any, allowed: tuple[str, ...]) -> dict[str, t.Any]:
    """A JSON object with no field but ``allowed``, every one of them given.

    :raises InvalidInput: not an object, or unknown or missing fields (all named).
    """
    if not isinstance(data, dict):
        raise InvalidInput("the body must be a JSON object")
    errors = {str(key)[:100]: "unknown field" for key in data if key not in allowed}
    errors.update({key: "is required" for key in allowed if key not in data})
    if errors:
        raise InvalidInput(f"invalid fields: {', '.join(sorted(errors))}", errors)
    return data


def upstream_order_from_json(data: t.Any) -> list[str] | None:
    """``{"order": [names]}``, or ``{"order": null}`` for the instance's list.

    :raises InvalidInput: another shape (which names are allowed is
        :meth:`~..admin.groups.GroupAdmin.set_upstream_order`'s to say).
    """
    order = exact_fields(data, ("order",))["order"]
    if order is not None and (
        not isinstance(order, list) or not all(isinstance(name, str) for name in order)
    ):
        problem = "must be a list of upstream names, or null for the instance's list"
        raise InvalidInput(f"order {problem}", {"order": problem})
    return t.cast("list[str] | None", order)


def upstream_order_from_form(form: MultiDict[str, str], instance: t.Sequence[str]) -> list[str]:
    """The upstreams checked in ``use``, ranked by their ``position-<name>`` number (from
    1; ties and blanks keep the instance's order, blanks last).

    :raises InvalidInput: a position that is not a number from 1 to the number of
        upstreams; ``errors`` holds the upstream's name.
    """
    chosen = set(form.getlist("use"))
    position = WholeNumber(1, len(instance))
    ranked = []
    for index, name in enumerate(instance):
        if name not in chosen:
            continue
        raw = (form.get(f"position-{name}") or "").strip()
        number = position.from_text(raw) if raw else len(instance) + 1
        if number is None:
            raise InvalidInput(position.problem, {name: position.problem})
        ranked.append((number, index, name))
    return [name for _number, _index, name in sorted(ranked)]


def credential_from_form(form: MultiDict[str, str]) -> tuple[str, str]:
    """The username and password typed (empty when missing: the rules say what is wrong)."""
    username, password = (form.get(field) or "" for field in CREDENTIAL_FIELDS)
    return username, password


def credential_from_json(data: t.Any) -> tuple[str, str]:
    """``{"username", "password"}``, both given, nothing else.

    :raises InvalidInput: another shape.
    """
    fields = exact_fields(data, CREDENTIAL_FIELDS)
    return fields["username"], fields["password"]
