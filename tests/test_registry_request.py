"""Host request hooks kept off the registry path with
:func:`flask_dependency_proxy.is_registry_request`: a host whose hooks write its session
(so every answer sets a cookie) and run something slow skips them on the registry, token
and peer routes, and only there."""

from __future__ import annotations

import base64
import typing as t

from flask import Flask, Response, request, session

from examples.platform import services
from flask_dependency_proxy import is_registry_request

USER, PASSWORD = "olivia", "olivia-password-0001"
DIGEST = "sha256:" + "a" * 64


def hooked_host(app_factory: t.Callable[..., Flask]) -> tuple[Flask, list[str]]:
    """The example platform with two hooks that use the helper; returns the paths the
    slow hook ran for."""
    app = app_factory(DEPENDENCY_PROXY_PEER_URL="http://127.0.0.1:9")
    slow: list[str] = []

    @app.before_request
    def _remember_visit() -> None:
        if not is_registry_request():
            session["visits"] = session.get("visits", 0) + 1

    @app.after_request
    def _collect(response: Response) -> Response:
        if not is_registry_request():
            slow.append(request.path)
        return response

    with app.app_context():
        services.create_user(USER, PASSWORD)
        services.create_group("shop", private=True)
        services.add_member("shop", USER, "owner")
    return app, slow


def test_registry_token_and_peer_answers_carry_no_host_cookie(
    app_factory: t.Callable[..., Flask],
) -> None:
    app, slow = hooked_host(app_factory)
    client = app.test_client()
    basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    answers = {
        "/v2/": client.get("/v2/"),
        "/v2/shop/dependency_proxy/containers/alpine/manifests/1": client.get(
            "/v2/shop/dependency_proxy/containers/alpine/manifests/1"
        ),
        "/v2/not/a/route": client.get("/v2/not/a/route"),
        "/jwt/auth": client.get(
            "/jwt/auth",
            query_string={
                "service": "dependency_proxy",
                "scope": "repository:shop/dependency_proxy/containers/alpine:pull",
            },
            headers={"Authorization": f"Basic {basic}"},
        ),
        "/-/dependency_proxy/peer/blobs/": client.get(f"/-/dependency_proxy/peer/blobs/{DIGEST}"),
    }
    statuses = {path: response.status_code for path, response in answers.items()}
    assert statuses["/v2/"] == 401 and statuses["/jwt/auth"] == 200, statuses
    assert statuses["/-/dependency_proxy/peer/blobs/"] in (401, 403, 404), statuses
    cookies = {path: response.headers.getlist("Set-Cookie") for path, response in answers.items()}
    assert cookies == {path: [] for path in answers}
    assert slow == []

    # Everything else of the host, the extension's pages and API included, runs the hooks.
    for path in ("/users/sign_in", "/groups/shop/-/dependency_proxy", "/api/v4/groups/shop"):
        response = client.get(path)
        assert any("session=" in c for c in response.headers.getlist("Set-Cookie")), path
    assert slow == ["/users/sign_in", "/groups/shop/-/dependency_proxy", "/api/v4/groups/shop"]


def test_it_follows_the_matched_route_and_is_false_outside_a_request(
    app_factory: t.Callable[..., Flask],
) -> None:
    app = app_factory()
    assert is_registry_request() is False
    with app.app_context():
        assert is_registry_request() is False
    with app.test_request_context("/v2/"):
        assert is_registry_request() is True
    with app.test_request_context("/groups/shop/-/dependency_proxy"):
        assert is_registry_request() is False
