"""What one registry request did: its metrics, its usage counts and its log line.

The registry and token views note what they learn (group, image, reference, the cache's
outcome) on the request; the upstream client's answer hook notes the status of
upstream's last answer. When the response's headers are ready, :func:`finish` counts
the request once, in the metrics and in the group's usage buffer; when its body has been
sent (or the client went away), one line goes to the ``flask_dependency_proxy.requests``
logger at INFO, as ``key=value`` pairs or as one JSON object
(``DEPENDENCY_PROXY_REQUEST_LOG``), so a log pipeline can parse it. A manifest GET,
served or refused by a supply-chain control, also goes to the pull record
(:mod:`..cache.audit`), with who asked and the host's job context.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import typing as t

from flask import Response, g, has_request_context, request

from .._state import state
from ..models.pulls import PullEntry
from ..models.tables import utcnow
from ._registry_http import after_body

if t.TYPE_CHECKING:
    from ..cache.results import Outcome
    from ..host import Principal

request_log = logging.getLogger("flask_dependency_proxy.requests")

_KEY = "_dependency_proxy_request"


@dataclasses.dataclass
class RequestRecord:
    """What a registry request did, as its log line and the metrics tell it."""

    started: float
    group: str | None = None
    image: str | None = None
    reference: str | None = None
    #: ``manifest`` or ``blob``, when the cache answered one.
    kind: str | None = None
    #: How the cache answered it.
    outcome: Outcome | None = None
    group_id: int | None = None
    #: The blob's whole size, whatever part of it the response carries.
    blob_size: int = 0
    upstream_status: int | None = None
    upstream_failed: bool = False
    #: Who asked (from the registry token).
    principal: Principal | None = None
    #: The manifest digest served or refused.
    digest: str | None = None
    #: ``blocked`` or ``refused``: a supply-chain control refused the pull.
    refused: str | None = None


def begin() -> None:
    """Start the record of a registry request (a ``before_request`` hook)."""
    setattr(g, _KEY, RequestRecord(started=time.monotonic()))


def _record() -> RequestRecord | None:
    if not has_request_context():
        return None
    return t.cast("RequestRecord | None", g.get(_KEY))


def note_target(group: str, image: str, reference: str) -> None:
    """The group, image and tag or digest the request is about."""
    record = _record()
    if record is not None:
        record.group, record.image, record.reference = group, image, reference


def note_principal(principal: Principal) -> None:
    """Who the request's token names."""
    record = _record()
    if record is not None:
        record.principal = principal


def note_manifest(group_id: int, outcome: Outcome, digest: str | None = None) -> None:
    """How the cache answered the manifest of this request, and the digest it served."""
    _note("manifest", group_id, outcome, 0)
    record = _record()
    if record is not None:
        record.digest = digest


def note_refusal(group_id: int, outcome: str, digest: str | None) -> None:
    """A supply-chain control refused the manifest of this request (``blocked``,
    ``refused``), and the digest it refused if one was known."""
    record = _record()
    if record is not None:
        record.kind, record.group_id = "manifest", group_id
        record.refused, record.digest = outcome, digest
    state(None).metrics.pull_refused(outcome)


def note_blob(group_id: int, outcome: Outcome, size: int | None) -> None:
    """How the cache answered the blob of this request, and the blob's size."""
    _note("blob", group_id, outcome, size or 0)


def _note(kind: str, group_id: int, outcome: Outcome, blob_size: int) -> None:
    record = _record()
    if record is not None:
        record.kind, record.group_id, record.outcome = kind, group_id, outcome
        record.blob_size = blob_size


def note_upstream_status(status: int | None) -> None:
    """Upstream's last answer during this request (``None``: no answer)."""
    record = _record()
    if record is not None:
        record.upstream_status = status
        record.upstream_failed = status is None


def finish(response: Response) -> Response:
    """Count the request and arrange its log line (an ``after_request`` hook).

    A pull counts once its answer is a success: a manifest GET as one pull, a blob GET
    as the blob's bytes, both from the cache or from upstream as the outcome says.
    """
    record = _record()
    if record is None:
        return response
    proxy = state(None)
    route = _route_kind()
    proxy.metrics.registry_request(
        route, request.method, response.status_code, time.monotonic() - record.started
    )
    size = response.content_length
    outcome = record.outcome
    if outcome is not None and request.method == "GET" and response.status_code < 300:
        assert record.kind is not None and record.group_id is not None
        proxy.metrics.cache_outcome(record.kind, outcome, record.group)
        if size:
            proxy.metrics.served_bytes(record.kind, outcome.from_cache, size)
        if record.kind == "manifest":
            proxy.cache.usage.count_pull(record.group_id, outcome)
            if record.image and record.reference:
                proxy.cache.usage.count_reference(record.group_id, record.image, record.reference)
        else:
            proxy.cache.usage.count_bytes(record.group_id, outcome, record.blob_size)
    if record.kind == "manifest" and request.method == "GET" and proxy.config.pull_record:
        _record_pull(record, response)
    log_format = proxy.config.request_log
    if log_format != "off" and request_log.isEnabledFor(logging.INFO):
        fields = {
            "method": request.method,
            "route": route,
            "status": response.status_code,
            "group": record.group,
            "image": record.image,
            "reference": record.reference,
            "outcome": outcome,
            "bytes": size,
            "upstream_status": "error" if record.upstream_failed else record.upstream_status,
            "client": request.remote_addr,
        }
        started = record.started

        def write() -> None:
            fields["duration_ms"] = round((time.monotonic() - started) * 1000, 1)
            request_log.info(format_line(fields, log_format))

        after_body(response, write)
    return response


def _record_pull(record: RequestRecord, response: Response) -> None:
    """Add a served or refused manifest GET to the pull record's buffer."""
    if record.refused is not None:
        outcome = record.refused
    elif response.status_code < 300 and record.outcome is not None:
        outcome = str(record.outcome)
    else:
        return
    principal = record.principal
    if principal is None or record.group_id is None:
        return
    state(None).cache.audit.add(
        PullEntry(
            pulled_at=utcnow(),
            group_id=record.group_id,
            image=record.image or "",
            reference=record.reference or "",
            digest=record.digest,
            outcome=outcome,
            principal_kind=str(principal.kind),
            subject=principal.subject,
            username=principal.username,
            context=principal.context,
            client_address=request.remote_addr,
            user_agent=request.user_agent.string or None,
        )
    )


def _route_kind() -> str:
    endpoint = request.endpoint or ""
    return endpoint.rpartition(".")[2] if endpoint else "unknown"


def format_line(fields: dict[str, t.Any], log_format: str) -> str:
    """One log line: ``key=value`` pairs (``-`` for none, quoted when needed) or JSON."""
    if log_format == "json":
        return json.dumps(fields, separators=(",", ":"))
    return " ".join(f"{key}={_value(value)}" for key, value in fields.items())


def _value(value: t.Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    if not text or any(c in text for c in ' "=\\') or not text.isprintable():
        return json.dumps(text)
    return text
