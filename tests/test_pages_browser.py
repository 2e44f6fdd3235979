"""The group's Dependency Proxy page in a real browser (Debian's Chromium, driven by
Playwright) against the example platform under gunicorn, with skopeo pulling through it
from a real upstream registry and the platform's own CLI running cleanup; and, in
process, how the pages sit in the host's templates.
"""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import jinja2
import pytest
import requests
from flask import Flask
from playwright.sync_api import Browser, BrowserContext, Page, expect, sync_playwright

from examples.platform import services
from flask_dependency_proxy.models.stats import human_size
from tests.platform_fixtures import csrf_from, login
from tests.support import checks, images, seed
from tests.support.clients import Skopeo
from tests.support.faultproxy import FaultProxy, Status
from tests.support.platform import Platform
from tests.support.registry import Registry
from tests.support.tokenserver import TokenUpstream

#: The subject is the pages in a browser, not the database: PostgreSQL only
#: (tests/test_group_page.py covers their queries on both databases).
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

OWNER = seed.Account("olivia", "olivia-password-0001")
DEVELOPER = seed.Account("devon", "devon-password-0001")
GROUP = "shop"
PAGE = f"/groups/{GROUP}/-/dependency_proxy"


def seed_pages(platform: Platform) -> None:
    """An owner and a developer of ``shop``, whose proxy is still off."""
    with platform.batch():
        platform.init_db()
        for account in (OWNER, DEVELOPER):
            platform.create_user(account.username, account.password)
        platform.create_group(GROUP, private=True)
        platform.add_member(GROUP, OWNER.username, "owner")
        platform.add_member(GROUP, DEVELOPER.username, "developer")


@pytest.fixture(scope="module")
def browser() -> t.Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium package")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def live(platform_factory: t.Callable[..., Platform], upstream: Registry) -> Platform:
    # Files a pull committed seconds ago may go in this test's cleanup run.
    return platform_factory(
        upstream.url,
        setup=seed_pages,
        extra_env={"DEPENDENCY_PROXY_CLEANUP_FILE_GRACE_SECONDS": "0"},
    )


def new_context(browser: Browser, platform: Platform, **options: t.Any) -> BrowserContext:
    context = browser.new_context(base_url=platform.url, **options)
    context.set_default_timeout(15_000)
    return context


def sign_in(page: Page, account: seed.Account) -> None:
    """Fill the host's login form (the page is already on it)."""
    assert "/users/sign_in" in page.url, page.url
    page.fill("input[name=username]", account.username)
    page.fill("input[name=password]", account.password)
    page.click("main form button[type=submit]")


def flash(page: Page) -> t.Any:
    return page.locator("[role=status]")


@pytest.mark.e2e
def test_owner_enables_pulls_clears_and_cleans_up(
    browser: Browser,
    live: Platform,
    upstream: Registry,
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    repository = f"pages/{unique_name}"
    pushed = images.push(
        images.build_image(unique_name, layer_sizes=(150_000, 350_000)),
        upstream,
        repository,
        "1.0",
        workdir=tmp_path,
    )
    document = json.loads(pushed.manifest)
    image_size = sum(d["size"] for d in [document["config"], *document["layers"]])

    context = new_context(browser, live)
    page = context.new_page()

    # Anonymous: the host's login, then back to the page.
    page.goto(PAGE)
    sign_in(page, OWNER)
    page.wait_for_url(f"**{PAGE}")
    expect(page.locator("#dependency-proxy-state")).to_have_text("Disabled")
    expect(page.locator("#dependency-proxy-empty")).to_be_visible()

    page.click("text=Enable the Dependency Proxy")
    expect(flash(page)).to_contain_text(f"Dependency Proxy enabled for {GROUP}.")
    expect(page.locator("#dependency-proxy-state")).to_have_text("Enabled")

    prefix = page.inner_text("#dependency-proxy-prefix").strip()
    assert prefix == f"{live.host}/{GROUP}/dependency_proxy/containers"
    # The copy button, the one thing that needs JavaScript.
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    page.click("#dependency-proxy-copy")
    expect(page.locator("#dependency-proxy-copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == prefix

    # Pull through the prefix read from the page.
    checks.ok(skopeo.login(live.host, OWNER.username, OWNER.password))
    result, target = skopeo.copy_to_dir(f"{prefix}/{repository}:1.0")
    checks.ok(result)
    checks.same_as_upstream(target, pushed, upstream)

    page.reload()
    row = page.locator("#dependency-proxy-images tbody tr", has_text=repository)
    expect(row).to_have_count(1)
    expect(row).to_contain_text("1.0")
    expect(row).to_contain_text(pushed.digest.split(":")[1][:12])
    size_cell = row.locator("td[data-bytes]")
    assert size_cell.get_attribute("data-bytes") == str(image_size)
    expect(size_cell).to_have_text(human_size(image_size))
    blob_count = len(pushed.blob_digests)
    expect(page.locator("#dependency-proxy-stats")).to_contain_text(f"{blob_count} blobs")
    for digest in pushed.blob_digests:
        assert live.store_files_for(digest), digest

    # Clear the cache, with a confirmation page.
    page.click("#dependency-proxy-clear")
    expect(page.locator("h1")).to_contain_text("Clear the Dependency Proxy cache of shop?")
    page.click("#dependency-proxy-confirm-clear")
    page.wait_for_url(f"**{PAGE}")
    expect(flash(page)).to_contain_text(
        f"Cache cleared: 1 manifests and {blob_count} blobs are scheduled for deletion"
    )
    expect(row.locator(".badge")).to_have_text("Scheduled for deletion")
    # A second clear within the hour is refused.
    page.click("#dependency-proxy-clear")
    page.click("#dependency-proxy-confirm-clear")
    expect(flash(page)).to_contain_text("Not cleared: the cache was cleared at")

    cleanup = live.flask("dependency-proxy", "cleanup")
    assert f"Deleted 1 manifests and {blob_count} blobs" in cleanup.stdout, cleanup.stdout

    page.reload()
    expect(page.locator("#dependency-proxy-empty")).to_be_visible()
    expect(page.locator("#dependency-proxy-images")).to_have_count(0)
    for digest in pushed.blob_digests:
        assert live.store_files_for(digest) == [], digest
    context.close()


@pytest.mark.e2e
def test_developer_gets_404_and_forms_need_their_csrf_token(
    browser: Browser, live: Platform
) -> None:
    developer = new_context(browser, live)
    page = developer.new_page()
    page.goto("/users/sign_in")
    sign_in(page, DEVELOPER)
    page.wait_for_url("**/")
    response = page.goto(PAGE)
    assert response is not None and response.status == 404
    response = page.goto(f"{PAGE}/clear")
    assert response is not None and response.status == 404
    developer.close()

    owner = new_context(browser, live)
    page = owner.new_page()
    page.goto(PAGE)
    sign_in(page, OWNER)
    page.wait_for_url(f"**{PAGE}")

    # The form as served, minus its token.
    page.evaluate(
        "document.querySelectorAll('input[name=dependency_proxy_csrf_token]')"
        ".forEach((field) => field.remove())"
    )
    page.check("input[name=cleanup_enabled]")
    with page.expect_response(lambda r: r.request.method == "POST") as posted:
        page.click("text=Save cleanup policy")
    assert posted.value.status == 400
    expect(page.locator("h1")).to_have_text("Form rejected")

    # A post with a token of its own making, as another site would send it.
    forged = owner.request.post(
        f"{PAGE}/settings", form={"enabled": "1", "dependency_proxy_csrf_token": "forged"}
    )
    assert forged.status == 400

    page.goto(PAGE)
    expect(page.locator("#dependency-proxy-state")).to_have_text("Disabled")
    expect(page.locator("input[name=cleanup_enabled]")).not_to_be_checked()
    owner.close()


@pytest.mark.e2e
def test_everything_but_the_copy_button_works_without_javascript(
    browser: Browser, live: Platform
) -> None:
    context = new_context(browser, live, java_script_enabled=False)
    page = context.new_page()
    page.goto(PAGE)
    sign_in(page, OWNER)
    page.wait_for_url(f"**{PAGE}")
    expect(page.locator("#dependency-proxy-copy")).to_be_hidden()

    page.check("input[name=cleanup_enabled]")
    page.fill("input[name=cleanup_days]", "7")
    page.click("text=Save cleanup policy")
    expect(flash(page)).to_contain_text("items not pulled for 7 days are deleted")
    expect(page.locator("input[name=cleanup_enabled]")).to_be_checked()
    expect(page.locator("input[name=cleanup_days]")).to_have_value("7")

    page.click("text=Enable the Dependency Proxy")
    expect(page.locator("#dependency-proxy-state")).to_have_text("Enabled")
    page.click("#dependency-proxy-clear")
    page.click("#dependency-proxy-confirm-clear")
    expect(flash(page)).to_contain_text("Cache cleared: 0 manifests and 0 blobs")
    context.close()


@pytest.mark.e2e
def test_owner_orders_upstreams_and_gives_one_credentials_that_reach_only_its_realm(
    browser: Browser,
    platform_factory: t.Callable[..., Platform],
    upstream: Registry,
    token_upstream: TokenUpstream,
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Two upstreams: ``hub`` (the plain registry behind a fault proxy that answers
    ``429`` with Docker Hub's rate-limit headers) and ``vendor`` (token auth). The owner
    puts ``vendor`` first and gives it the group's own credentials; a pull by plain name
    then comes from ``vendor`` with them, and the page shows what each upstream said."""
    registry, token_server, vendor_creds = token_upstream
    repository = f"vendor/{unique_name}"
    pushed = images.push(
        images.build_image(unique_name, layer_sizes=(20_000,)),
        registry,
        repository,
        "1.0",
        workdir=tmp_path,
        creds=vendor_creds,
    )
    hub = FaultProxy(upstream.url).start()
    try:
        hub.add(
            Status(
                429,
                retry_after=600,
                headers=(("RateLimit-Limit", "100;w=21600"), ("RateLimit-Remaining", "0;w=21600")),
            ),
            path="/manifests/",
        )
        entries = {
            "hub": {"url": hub.url, "hosts": ["docker.io"], "allow_private_redirects": True},
            "vendor": {
                "url": registry.url,
                "hosts": ["registry.vendor.example"],
                "allow_private_redirects": True,
            },
        }
        live = platform_factory(
            "http://127.0.0.1:9",
            setup=seed_pages,
            extra_env={
                "DEPENDENCY_PROXY_UPSTREAMS": json.dumps(entries),
                "DEPENDENCY_PROXY_UPSTREAM_RETRIES": "0",
            },
            # What the page shows of an upstream is what its one worker saw.
            gunicorn_args=("--workers", "1"),
        )
        _order_and_credentials(browser, live, skopeo, pushed, registry, repository, vendor_creds)
    finally:
        hub.stop()
    seen = [r for r in token_server.requests if repository in r.repositories]
    assert seen and {r.username for r in seen} == {vendor_creds[0]}, seen
    assert vendor_creds[1] not in live.process.log_text()


def _order_and_credentials(
    browser: Browser,
    live: Platform,
    skopeo: Skopeo,
    pushed: images.Pushed,
    vendor: Registry,
    repository: str,
    vendor_creds: tuple[str, str],
) -> None:
    username, password = vendor_creds
    context = new_context(browser, live)
    page = context.new_page()
    page.goto(PAGE)
    sign_in(page, OWNER)
    page.wait_for_url(f"**{PAGE}")
    page.click("text=Enable the Dependency Proxy")
    rows = page.locator("#dependency-proxy-upstream-table tbody tr")
    expect(rows).to_have_count(2)
    assert [r.get_attribute("data-upstream") for r in rows.all()] == ["hub", "vendor"]
    vendor_row = page.locator("#dependency-proxy-upstream-table tr[data-upstream=vendor]")
    expect(vendor_row.locator(".credential")).to_have_text("The instance's")

    # Credentials for vendor: saved, never shown back.
    form = page.locator(".upstream-credentials[data-upstream=vendor]")
    form.locator("input[name=username]").fill(username)
    form.locator("input[name=password]").fill(password)
    form.locator("text=Save credentials for vendor").click()
    expect(flash(page)).to_contain_text("Credentials for vendor saved.")
    expect(vendor_row.locator(".credential")).to_have_text("Set by this group")
    expect(form.locator("input[name=password]")).to_have_value("")
    assert password not in page.content()

    # Vendor first; the hub stays second.
    page.fill("input[name=position-vendor]", "1")
    page.fill("input[name=position-hub]", "2")
    page.click("#dependency-proxy-save-upstreams")
    expect(flash(page)).to_contain_text("Upstreams saved: vendor, hub, in this order.")
    assert [r.get_attribute("data-upstream") for r in rows.all()] == ["vendor", "hub"]
    expect(page.locator("#dependency-proxy-upstream-order-note")).to_contain_text(
        "checked below, in this order"
    )

    # A plain name goes down the group's list: vendor has it, with the group's credential.
    prefix = page.inner_text("#dependency-proxy-prefix").strip()
    checks.ok(skopeo.login(live.host, OWNER.username, OWNER.password))
    result, target = skopeo.copy_to_dir(f"{prefix}/{repository}:1.0")
    checks.ok(result)
    checks.same_as_upstream(target, pushed, vendor)
    # A name with the hub's host goes to the hub alone, which is out of pulls.
    image = "docker.io/library/nothing"
    refused = requests.get(
        f"{live.url}/v2/{live.repository(GROUP, image)}/manifests/1",
        headers=live.bearer(OWNER.username, OWNER.password, GROUP, image),
        timeout=30,
    )
    assert refused.status_code == 429, refused.text

    page.reload()
    expect(vendor_row.locator(".status")).to_have_text("200")
    hub_row = page.locator("#dependency-proxy-upstream-table tr[data-upstream=hub]")
    expect(hub_row.locator(".status")).to_contain_text("Not asked until")
    expect(hub_row.locator(".rate-limit")).to_have_text("0 of 100")
    assert password not in page.content()

    # Narrowed to vendor alone; then back to the instance's list; then no credentials.
    page.uncheck("input[name=use][value=hub]")
    page.click("#dependency-proxy-save-upstreams")
    expect(flash(page)).to_contain_text("Upstreams saved: vendor, in this order.")
    expect(hub_row).to_have_class("unused")
    expect(hub_row.locator("input[name=position-hub]")).to_have_value("")
    page.click("#dependency-proxy-reset-upstreams")
    expect(flash(page)).to_contain_text("every upstream of the instance")
    assert [r.get_attribute("data-upstream") for r in rows.all()] == ["hub", "vendor"]
    page.click("text=Clear credentials for vendor")
    expect(flash(page)).to_contain_text("Credentials for vendor removed")
    expect(vendor_row.locator(".credential")).to_have_text("The instance's")
    context.close()


# -- in process: the pages inside the host's templates -------------------------------------


@pytest.fixture
def owner_app(app_factory: t.Callable[..., Flask]) -> t.Callable[..., Flask]:
    """An app with ``olivia`` owning ``shop``."""

    def make(**config: t.Any) -> Flask:
        app = app_factory(**config)
        with app.app_context():
            services.create_user(OWNER.username, OWNER.password)
            services.create_group(GROUP, private=True)
            services.add_member(GROUP, OWNER.username, "owner")
        return app

    return make


def test_pages_extend_the_configured_base_and_the_host_overrides_them(
    owner_app: t.Callable[..., Flask],
) -> None:
    app = owner_app(DEPENDENCY_PROXY_BASE_TEMPLATE="layouts/narrow.html")
    host_templates = jinja2.DictLoader(
        {
            "layouts/narrow.html": "<div id=narrow>{% block content %}{% endblock %}</div>",
            "dependency_proxy/clear.html": "The host's own page for {{ group.full_path }}.",
        }
    )
    # The host's templates folder comes before the extension's.
    app.jinja_loader = jinja2.ChoiceLoader([host_templates, app.jinja_loader])  # type: ignore[method-assign,assignment]
    client = app.test_client()
    login(client, OWNER.username, OWNER.password)
    page = client.get(PAGE).get_data(as_text=True)
    assert page.startswith("<div id=narrow>") and "Dependency Proxy" in page
    assert client.get(f"{PAGE}/clear").get_data(as_text=True) == "The host's own page for shop."


def test_the_hosts_own_forms_keep_working_on_the_page(owner_app: t.Callable[..., Flask]) -> None:
    client = owner_app().test_client()
    login(client, OWNER.username, OWNER.password)
    # The sign-out form in the host's base template carries the host's token.
    token = csrf_from(client, PAGE)
    response = client.post("/users/sign_out", data={"csrf_token": token})
    assert response.status_code == 302
    assert client.get(PAGE).status_code == 302  # signed out: back to the login


@pytest.mark.parametrize("days", ["0", "3651", "abc", "²", "-5", ""])
def test_policy_days_are_validated(owner_app: t.Callable[..., Flask], days: str) -> None:
    client = owner_app().test_client()
    login(client, OWNER.username, OWNER.password)
    page = client.get(PAGE).get_data(as_text=True)
    token = page.split('name="dependency_proxy_csrf_token" value="', 1)[1].split('"', 1)[0]
    response = client.post(
        f"{PAGE}/cleanup_policy",
        data={"cleanup_enabled": "1", "cleanup_days": days, "dependency_proxy_csrf_token": token},
        follow_redirects=True,
    )
    body = response.get_data(as_text=True)
    assert "Days must be a whole number from 1 to 3650." in body
    assert 'name="cleanup_days" value="90"' in body
    assert 'name="cleanup_enabled" value="1" >' in body  # still off


def test_odd_page_numbers_show_the_first_page(owner_app: t.Callable[..., Flask]) -> None:
    client = owner_app().test_client()
    login(client, OWNER.username, OWNER.password)
    for page in ("abc", "0", "-1", "²", "99999999999"):
        assert client.get(PAGE, query_string={"page": page}).status_code == 200


@pytest.mark.e2e
def test_owner_sets_the_size_limit_and_sees_the_usage(
    browser: Browser,
    live: Platform,
    upstream: Registry,
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    repository = f"pages/{unique_name}"
    pushed = images.push(
        images.build_image(unique_name, layer_sizes=(200_000,)),
        upstream,
        repository,
        "1.0",
        workdir=tmp_path,
    )
    document = json.loads(pushed.manifest)
    used = len(pushed.manifest) + sum(d["size"] for d in [document["config"], *document["layers"]])

    context = new_context(browser, live)
    page = context.new_page()
    page.goto(PAGE)
    sign_in(page, OWNER)
    page.wait_for_url(f"**{PAGE}")
    usage = page.locator("#dependency-proxy-usage")
    expect(usage).to_contain_text("0 bytes cached; no size limit.")
    page.click("text=Enable the Dependency Proxy")

    checks.ok(skopeo.login(live.host, OWNER.username, OWNER.password))
    checks.ok(skopeo.copy_to_dir(live.image(GROUP, repository, "1.0"))[0])

    page.reload()
    expect(usage).to_contain_text(f"{human_size(used)} cached; no size limit.")
    assert usage.get_attribute("data-used") == str(used)

    field = page.locator("input[name=size_limit]")
    field.fill("1 MiB")
    page.click("text=Save size limit")
    expect(flash(page)).to_contain_text("Size limit saved: 1 MiB.")
    expect(usage).to_contain_text(
        f"{human_size(used)} of 1.0 MiB used ({used * 100 // 1024**2} %)."
    )
    expect(field).to_have_value("1 MiB")
    expect(page.locator("#dependency-proxy-quota")).to_contain_text(
        "the least recently pulled cached items are removed"
    )

    # A bad value is a form error and changes nothing.
    field.fill("-5 GiB")
    page.click("text=Save size limit")
    expect(flash(page)).to_contain_text("The size limit must be a size such as 500 MiB")
    expect(field).to_have_value("1 MiB")

    # The API shows what the page set.
    token = live.flask("token", "create", OWNER.username, "--scopes", "api").stdout.split()[-1]
    body = requests.get(
        f"{live.url}/api/v4/groups/{GROUP}/dependency_proxy/settings",
        headers={"PRIVATE-TOKEN": token},
        timeout=30,
    ).json()
    assert body["quota"] == {"limit_bytes": 1024**2, "used_bytes": used, "policy": "evict"}

    field.fill("")
    page.click("text=Save size limit")
    expect(flash(page)).to_contain_text("Size limit removed")
    expect(usage).to_contain_text("no size limit")
    context.close()


@pytest.mark.parametrize(
    "value", ["0", "-5", "abc", "5 MB", "1.5", "1025 TiB", "9" * 40, "²", "1 GiB; drop"]
)
def test_size_limit_values_are_validated(owner_app: t.Callable[..., Flask], value: str) -> None:
    client = owner_app().test_client()
    login(client, OWNER.username, OWNER.password)
    page = client.get(PAGE).get_data(as_text=True)
    token = page.split('name="dependency_proxy_csrf_token" value="', 1)[1].split('"', 1)[0]
    response = client.post(
        f"{PAGE}/quota",
        data={"size_limit": value, "dependency_proxy_csrf_token": token},
        follow_redirects=True,
    )
    assert response.status_code == 200
    body = response.get_data(as_text=True)
    assert "The size limit must be a size such as 500 MiB or 20 GiB" in body
    assert 'name="size_limit" value=""' in body
    assert "no size limit" in body
