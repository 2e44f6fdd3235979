"""The pages under a host's Content-Security-Policy, in process: every ``<style>`` and
``<script>`` carries the nonce of the request (from ``DEPENDENCY_PROXY_CSP_NONCE`` or
``g.csp_nonce``), no element has a ``style=`` attribute or an inline event handler, and
the style goes into the base template's head block, whatever it is called
(``DEPENDENCY_PROXY_HEAD_BLOCK``). Chromium runs the same pages under a real policy in
:mod:`tests.test_pages_browser_csp`."""

from __future__ import annotations

import datetime as dt
import re
import secrets
import typing as t

import jinja2
import pytest
from flask import Flask, g
from flask.testing import FlaskClient

from examples.platform import services
from flask_dependency_proxy import state
from flask_dependency_proxy.models.usage import DayCounts, write_usage
from tests import lifecycle_fixtures as lf
from tests.platform_fixtures import login

USER, PASSWORD = "olivia", "olivia-password-0001"
PAGE = "/groups/shop/-/dependency_proxy"
#: Tags that open an element with an inline style or an inline event handler.
_INLINE = re.compile(r"<[a-zA-Z][^>]*\s(?:style|on[a-z]+)\s*=", re.S)
_TAGS = re.compile(r"<(style|script)\b([^>]*)>", re.I)


def layout(head_block: str, nonce_expression: str | None) -> str:
    """A host base template whose own style carries the nonce (when it has one)."""
    nonce = f' nonce="{{{{ {nonce_expression} }}}}"' if nonce_expression else ""
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        "<title>{% block title %}{% endblock %}</title>"
        f"<style{nonce}>body {{ margin: 1rem; }}</style>"
        f"{{% block {head_block} %}}{{% endblock %}}</head><body>"
        "{% for category, message in get_flashed_messages(with_categories=true) %}"
        '<p class="flash {{ category }}">{{ message }}</p>{% endfor %}'
        "{% block content %}{% endblock %}</body></html>"
    )


def host_nonce() -> str:
    """The nonce the host keeps for the request (named by an import string in a test)."""
    return t.cast(str, g.host_nonce)


def host_app(
    app_factory: t.Callable[..., Flask],
    *,
    head_block: str = "head",
    nonce_attribute: str | None = "host_nonce",
    **config: t.Any,
) -> Flask:
    """The example platform with a layout of its own, a nonce per request kept in
    ``g.<nonce_attribute>`` (none when ``None``), and ``olivia`` owning ``shop``, which
    has a cached image and some usage."""
    app = app_factory(DEPENDENCY_PROXY_BASE_TEMPLATE="layouts/host.html", **config)
    expression = f"g.{nonce_attribute}" if nonce_attribute else None
    layouts = jinja2.DictLoader({"layouts/host.html": layout(head_block, expression)})
    app.jinja_loader = jinja2.ChoiceLoader([layouts, app.jinja_loader])  # type: ignore[method-assign,assignment]
    if nonce_attribute:

        @app.before_request
        def _nonce() -> None:
            setattr(g, nonce_attribute, secrets.token_urlsafe(16))

    with app.app_context():
        services.create_user(USER, PASSWORD)
        group = services.create_group("shop", private=True)
        services.add_member("shop", USER, "owner")
        lf.add_manifest(group.id, "org/app", "1.0")
        today = dt.datetime.now(dt.UTC).date()
        write_usage(state(None).metadata.session, {(group.id, today): DayCounts(3, 1, 4096, 1024)})
    return app


def every_page(client: FlaskClient) -> dict[str, str]:
    """The HTML of each page of the extension: the group page, both confirmations and
    the error page (a form sent without the extension's CSRF token)."""
    pages = {
        "group": client.get(PAGE),
        "clear": client.get(f"{PAGE}/clear"),
        "delete image": client.get(f"{PAGE}/images/org/app/delete"),
        "error": client.post(f"{PAGE}/clear", data={}),
    }
    assert {name: r.status_code for name, r in pages.items()} == {
        "group": 200,
        "clear": 200,
        "delete image": 200,
        "error": 400,
    }
    return {name: response.get_data(as_text=True) for name, response in pages.items()}


def nonces(html: str) -> list[tuple[str, str | None]]:
    """``(tag, nonce)`` of every ``<style>`` and ``<script>`` of a page."""
    found = []
    for tag, attributes in _TAGS.findall(html):
        nonce = re.search(r'\snonce="([^"]*)"', attributes)
        found.append((tag.lower(), nonce.group(1) if nonce else None))
    return found


def head_of(html: str) -> str:
    return html.split("</head>", 1)[0]


@pytest.mark.parametrize(
    ("nonce_attribute", "config"),
    [
        ("csp_nonce", {}),
        ("host_nonce", {"DEPENDENCY_PROXY_CSP_NONCE": host_nonce}),
        ("host_nonce", {"DEPENDENCY_PROXY_CSP_NONCE": f"{__name__}:host_nonce"}),
    ],
    ids=["g.csp_nonce", "callable", "import string"],
)
def test_every_style_and_script_carries_the_requests_nonce(
    app_factory: t.Callable[..., Flask], nonce_attribute: str, config: dict[str, t.Any]
) -> None:
    app = host_app(app_factory, nonce_attribute=nonce_attribute, **config)
    client = app.test_client()
    login(client, USER, PASSWORD)
    seen: set[str] = set()
    for name, html in every_page(client).items():
        found = nonces(html)
        # The host's style, the extension's style; the group page has its script too.
        tags = sorted(tag for tag, _ in found)
        assert tags == (["script", "style", "style"] if name == "group" else ["style", "style"])
        (nonce,) = {nonce for _, nonce in found}
        assert nonce and len(nonce) >= 16, (name, found)
        seen.add(nonce)
        assert not _INLINE.search(html), (name, _INLINE.search(html))
        assert "dependency-proxy-styled" in head_of(html), name
    assert len(seen) == 4  # a new nonce per request, each page with its own


def test_without_a_nonce_the_pages_carry_no_nonce_attribute(
    app_factory: t.Callable[..., Flask],
) -> None:
    client = host_app(app_factory, nonce_attribute=None).test_client()
    login(client, USER, PASSWORD)
    for name, html in every_page(client).items():
        assert nonces(html) and all(nonce is None for _, nonce in nonces(html)), name
        assert "nonce" not in html, name
        assert not _INLINE.search(html), name


def test_the_style_goes_into_the_configured_head_block(
    app_factory: t.Callable[..., Flask],
) -> None:
    client = host_app(
        app_factory, head_block="extra_head", DEPENDENCY_PROXY_HEAD_BLOCK="extra_head"
    ).test_client()
    login(client, USER, PASSWORD)
    for name, html in every_page(client).items():
        head = head_of(html)
        assert "dependency-proxy-styled" in head, name
        assert html.count("dependency-proxy-styled") == 1, name
    group = every_page(client)["group"]
    assert '<meta name="dependency-proxy-csrf-token"' in head_of(group)
