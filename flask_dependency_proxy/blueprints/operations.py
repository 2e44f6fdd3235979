"""Routes for operators and load balancers: liveness, readiness and Prometheus metrics.

They live under ``/-/dependency_proxy/`` (outside ``/v2/``, which belongs to the
registry protocol) and answer JSON or the Prometheus text format, never a page.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
import typing as t

import sqlalchemy as sa
from flask import Blueprint, Response, jsonify, request

from .._state import state
from ..metrics import CONTENT_TYPE
from ..stores.base import StorageError

log = logging.getLogger("flask_dependency_proxy")

bp = Blueprint("dependency_proxy_operations", __name__, url_prefix="/-/dependency_proxy")


@bp.get("/health")
def health() -> Response:
    """Liveness: the process answers requests. It asks nothing else, so a database
    outage never gets a load balancer to restart every web process."""
    return _no_store(jsonify(status="ok"))


@bp.get("/ready")
def ready() -> Response:
    """Readiness: the database and the blob store answer within
    ``READY_TIMEOUT_SECONDS``; otherwise ``503`` naming each that did not (why goes to
    the log, never to the caller)."""
    proxy = state(None)
    engine = proxy.metadata.engine
    checks: dict[str, t.Callable[[], None]] = {
        "database": lambda: _select_one(engine),
        "storage": proxy.store.check,
    }
    failures = _run_checks(checks, proxy.config.ready_timeout_seconds)
    if failures:
        response = jsonify(
            status="unavailable",
            checks={name: failures.get(name, "ok") for name in checks},
            reasons=failures,
        )
        response.status_code = 503
        response.headers["Retry-After"] = "5"
        return _no_store(response)
    return _no_store(jsonify(status="ok", checks={name: "ok" for name in checks}))


@bp.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics when ``METRICS_ENABLED``; with ``METRICS_TOKEN`` only for a
    scrape that sends it as a bearer token."""
    proxy = state(None)
    if not proxy.config.metrics_enabled:
        return _no_store(_json_error(404, "metrics are not enabled"))
    token = proxy.config.metrics_token
    if token is not None:
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode(), token.encode()
        ):
            response = _json_error(401, "a bearer token is needed to scrape metrics")
            response.headers["WWW-Authenticate"] = 'Bearer realm="dependency_proxy_metrics"'
            return _no_store(response)
    return _no_store(Response(proxy.metrics.exposition(), content_type=CONTENT_TYPE))


def _select_one(engine: sa.Engine) -> None:
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT 1"))


#: The reason ``ready`` gives for a failed check; the detail goes to the log only.
_FAILED = "the {name} check failed (the log says why)"


def _run_checks(checks: dict[str, t.Callable[[], None]], timeout: float) -> dict[str, str]:
    """Run the checks side by side; the reason of each that failed or did not finish
    within ``timeout`` seconds. A hung check is left to its own timeouts, never waited
    for."""
    results: dict[str, str] = {}

    def run(name: str, check: t.Callable[[], None]) -> None:
        # The route answers anyone: the answer names the check, the log says why (a
        # database error carries its server, port, user and database; a storage error
        # its path, endpoint and bucket).
        try:
            check()
        except StorageError as exc:
            log.warning("not ready: %s: %s (path %s)", name, exc, exc.path)
            results[name] = _FAILED.format(name=name)
        except Exception as exc:
            log.warning("not ready: %s: %s: %s", name, type(exc).__name__, exc)
            results[name] = _FAILED.format(name=name)
        else:
            results[name] = "ok"

    threads = [
        threading.Thread(target=run, args=item, name=f"ready-{item[0]}", daemon=True)
        for item in checks.items()
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    failures = {}
    for name in checks:
        outcome = results.get(name)
        if outcome is None:
            failures[name] = f"no answer within {timeout:g} s"
        elif outcome != "ok":
            failures[name] = outcome
    return failures


def _json_error(status: int, message: str) -> Response:
    response = jsonify(message=message)
    response.status_code = status
    return response


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response
