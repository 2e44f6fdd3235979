"""The group's signature policy: ``GET``/``PUT``/``DELETE signature_policy``.

``default`` says whether the group follows the instance's policy
(``DEPENDENCY_PROXY_SIGNATURE_MODE`` and ``_SIGNERS``); a ``PUT`` gives the group its
own, a ``DELETE`` drops it, so the group follows the instance's again."""

from __future__ import annotations

import typing as t

from flask import Response, request

from ..._state import state
from ...cache.signing import PolicyError, SignatureGate
from ._base import ALL_METHODS, ROUTE, ApiError, bp, group, json_body, json_response, methods


def _gate() -> SignatureGate:
    gate = state(None).signatures
    if gate is None:  # pragma: no cover - the extension always wires one
        raise ApiError(404, "404 Not Found")
    return gate


def _body(group_id: int, document: dict[str, t.Any], gate: SignatureGate) -> dict[str, t.Any]:
    roots = gate.roots
    return {
        "group_id": group_id,
        **document,
        "trust": {
            "certificate_authorities": len(roots.authorities) if roots else 0,
            "transparency_logs": len(roots.logs) if roots else 0,
        },
    }


@bp.route(f"{ROUTE}/signature_policy", methods=ALL_METHODS)
def signature_policy(group_ref: str) -> Response:
    methods("GET", "PUT", "DELETE")
    proxy = state(None)
    gate = _gate()
    with proxy.database.phase("API signature policy"):
        found = group(group_ref)
        if request.method == "DELETE":
            return json_response(_body(found.id, gate.use_default(found.id), gate))
        if request.method != "PUT":
            return json_response(_body(found.id, gate.policy(found.id), gate))
    body = json_body()
    try:
        with proxy.database.phase("API signature policy update"):
            document = gate.save_policy(found.id, body)
    except PolicyError as error:
        raise ApiError(
            400, f"400 Bad request - {error}", errors={"signature_policy": str(error)}
        ) from None
    return json_response(_body(found.id, document, gate))
