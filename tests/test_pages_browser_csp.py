"""The extension's pages in Chromium under a host's strict Content-Security-Policy:
``default-src 'self'; script-src 'nonce-…'; style-src 'nonce-…'`` with a new nonce per
request, and a base template whose head block is not called ``head``.

The host is the example platform in process, served from a thread by werkzeug, with a
base template of its own (every ``<style>`` of it nonce'd, the head block named
``page_head``) and its nonce handed to the extension through
``DEPENDENCY_PROXY_CSP_NONCE`` as an import string. Every page of the extension (the
group page with cached images and the usage chart, the two confirmations, the error
page) must load without one CSP violation, styled, with a working copy button.
"""

from __future__ import annotations

import datetime as dt
import secrets
import threading
import typing as t

import jinja2
import pytest
from flask import Flask, Response, g
from playwright.sync_api import Browser, ConsoleMessage, Page, expect
from werkzeug.serving import make_server

from examples.platform import services
from flask_dependency_proxy import state
from flask_dependency_proxy.models.usage import DayCounts, write_usage
from tests import lifecycle_fixtures as lf
from tests.test_pages_browser import (  # noqa: F401
    GROUP,
    OWNER,
    PAGE,
    browser,
    sign_in,
)

pytestmark = pytest.mark.e2e

#: The subject is the pages in a browser, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

#: The host's layout: its own style carries the nonce, its head block has another name.
STRICT_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>{% block title %}{% endblock %} · Strict host</title>
<style nonce="{{ g.host_nonce }}">body { font-family: sans-serif; margin: 1rem; }</style>
{% block page_head %}{% endblock %}
</head><body><main>
{% for category, message in get_flashed_messages(with_categories=true) %}
  <p class="flash {{ category }}" role="status">{{ message }}</p>
{% endfor %}
{% block content %}{% endblock %}
</main></body></html>
"""

#: Records every violation the page sees (Playwright's init scripts run under any CSP).
VIOLATION_RECORDER = """
window.__violations = [];
document.addEventListener("securitypolicyviolation", (event) => {
  window.__violations.push(`${event.violatedDirective} ${event.blockedURI} ${event.sample}`);
});
"""


def host_nonce() -> str:
    """The strict host's nonce of the current request (``DEPENDENCY_PROXY_CSP_NONCE``)."""
    return t.cast(str, g.host_nonce)


def strict_host(app: Flask) -> None:
    """Give ``app`` a new nonce per request, the policy that requires it, and the layout."""

    @app.before_request
    def _nonce() -> None:
        g.host_nonce = secrets.token_urlsafe(16)

    @app.after_request
    def _policy(response: Response) -> Response:
        nonce = getattr(g, "host_nonce", "none")
        response.headers["Content-Security-Policy"] = (
            f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'"
        )
        return response

    layouts = jinja2.DictLoader({"base.html": STRICT_BASE})
    app.jinja_loader = jinja2.ChoiceLoader([layouts, app.jinja_loader])  # type: ignore[method-assign,assignment]


def seed_group(app: Flask) -> None:
    """``olivia`` owns ``shop``, which has two cached images and a month of usage."""
    with app.app_context():
        services.create_user(OWNER.username, OWNER.password)
        group = services.create_group(GROUP, private=True)
        services.add_member(GROUP, OWNER.username, "owner")
        lf.add_manifest(group.id, "library/alpine", "3.20", content=lf.image_manifest(10, [3000]))
        lf.add_manifest(group.id, "org/app", "1.0", content=lf.image_manifest(10, [9000]))
        today = dt.datetime.now(dt.UTC).date()
        write_usage(
            state(None).metadata.session,
            {
                (group.id, today): DayCounts(6, 2, 5 * 1024 * 1024, 1024 * 1024),
                (group.id, today - dt.timedelta(days=3)): DayCounts(1, 4, 1024, 4096),
            },
        )


@pytest.fixture
def strict(app_factory: t.Callable[..., Flask]) -> t.Iterator[str]:
    """The strict host serving on a free port; yields its base URL."""
    app = app_factory(
        DEPENDENCY_PROXY_CSP_NONCE=f"{__name__}:host_nonce",
        DEPENDENCY_PROXY_HEAD_BLOCK="page_head",
    )
    strict_host(app)
    seed_group(app)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="strict-host", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(10)


def styled(page: Page) -> bool:
    """The extension's style sheet applies to the page's ``.dependency-proxy`` part."""
    marker = page.locator(".dependency-proxy").evaluate(
        "e => getComputedStyle(e).getPropertyValue('--dependency-proxy-styled').trim()"
    )
    return bool(marker == "1")


class Violations:
    """CSP violations on Playwright's console and as ``securitypolicyviolation`` events."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.console: list[str] = []
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
            self.console.append(message.text)

    def assert_none(self, where: str) -> None:
        events = self.page.evaluate("window.__violations")
        assert (self.console, events) == ([], []), f"CSP violations on {where}"


def test_every_page_is_clean_styled_and_the_copy_button_works_under_a_strict_csp(
    browser: Browser,  # noqa: F811
    strict: str,
) -> None:
    context = browser.new_context(base_url=strict)
    context.set_default_timeout(15_000)
    context.add_init_script(VIOLATION_RECORDER)
    page = context.new_page()
    violations = Violations(page)

    page.goto(PAGE)
    violations.assert_none("the host's login page")
    sign_in(page, OWNER)
    page.wait_for_url(f"**{PAGE}")

    # The group page: images, the usage chart, styled by the extension's style sheet.
    response = page.reload()
    assert response is not None and response.status == 200
    policy = response.headers["content-security-policy"]
    assert "script-src 'nonce-" in policy, policy
    expect(page.locator("#dependency-proxy-images td.image")).to_have_count(2)
    chart = page.locator("#dependency-proxy-usage-chart")
    expect(chart).to_be_visible()
    assert chart.locator("rect.cached").count() >= 1 and chart.locator("rect.saved").count() >= 1
    assert chart.locator("rect.cached").first.evaluate("e => getComputedStyle(e).fill") == (
        "rgb(46, 125, 50)"
    )
    assert (
        page.locator(".dependency-proxy .prefix").evaluate("e => getComputedStyle(e).display")
        == "flex"
    )
    assert chart.evaluate("e => getComputedStyle(e).maxWidth") == "640px"
    assert styled(page)
    violations.assert_none("the group page")

    # The copy button: its nonce'd script shows it and copies the prefix.
    prefix = page.inner_text("#dependency-proxy-prefix").strip()
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=strict)
    expect(page.locator("#dependency-proxy-copy")).to_be_visible()
    page.click("#dependency-proxy-copy")
    expect(page.locator("#dependency-proxy-copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == prefix
    violations.assert_none("the copy button")

    # Delete one image: its confirmation page.
    page.click("#dependency-proxy-images a.delete-image >> nth=0")
    expect(page.locator("#dependency-proxy-confirm-delete-image")).to_be_visible()
    assert styled(page)
    violations.assert_none("the delete-image confirmation")

    # Clear the cache: its confirmation page.
    page.goto(f"{PAGE}/clear")
    expect(page.locator("#dependency-proxy-confirm-clear")).to_be_visible()
    assert styled(page)
    violations.assert_none("the clear confirmation")

    # The error page: a form sent without the extension's CSRF token.
    page.evaluate(
        "document.querySelectorAll('input[name=dependency_proxy_csrf_token]')"
        ".forEach((field) => field.remove())"
    )
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.click("#dependency-proxy-confirm-clear")
    assert posted.value.status == 400
    expect(page.locator("h1")).to_have_text("Form rejected")
    assert styled(page)
    violations.assert_none("the error page")
    context.close()
