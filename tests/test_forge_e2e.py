"""The second example host, ``examples/forge``, run for real: gunicorn with the shipped
``examples/gunicorn.conf.py`` on SQLite, a real upstream registry, skopeo and containerd
pulling through its mixed-case group, docker's refresh-token login, every page of the
extension in Chromium under the forge's strict Content-Security-Policy, and a deleted
group whose id the next group gets.
"""

from __future__ import annotations

import re
import typing as t
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect, sync_playwright

from tests.support import checks, images
from tests.support.clients import Skopeo
from tests.support.containerd import Containerd
from tests.support.platform import Platform
from tests.support.processes import ProcessFactory
from tests.support.registry import Registry
from tests.test_pages_browser import CHROMIUM, CHROMIUM_ARGS

pytestmark = pytest.mark.e2e

PASSWORDS = {name: f"{name}-password-0001" for name in ("alice", "bob", "dave")}
GROUP = "DevOps"
#: Image names are lowercase; the group is found whatever the case.
IMAGE_GROUP = "devops"
PAGE = f"/groups/{GROUP}/-/dependency_proxy"
SERVICE = "dependency_proxy"


@pytest.fixture(scope="module")
def forge(
    module_processes: ProcessFactory,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: Registry,
) -> t.Iterator[Platform]:
    """The forge under gunicorn: ``DevOps`` owned by alice, with bob and dave as members,
    its proxy on."""
    directory = tmp_path_factory.mktemp("forge")
    live = Platform(
        module_processes,
        directory,
        database_url=f"sqlite:///{directory / 'forge.sqlite3'}",
        upstream_url=upstream.url,
        name="forge",
        app_import="examples.forge",
    )
    with live.batch():
        live.setup_command("init-db")
        for name, password in PASSWORDS.items():
            live.setup_command("user", "create", name, "--password", password)
        live.setup_command("group", "create", GROUP, "--owner", "alice")
        live.setup_command("group", "add-member", GROUP, "bob")
        live.setup_command("group", "add-member", GROUP, "dave")
        live.setup_command("dependency-proxy", "enable", IMAGE_GROUP)
    live.start()
    yield live
    live.stop()


@pytest.fixture(scope="module")
def containerd(
    module_processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[Containerd]:
    daemon = Containerd(module_processes, tmp_path_factory.mktemp("containerd")).start()
    yield daemon
    daemon.process.stop()


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


def push(upstream: Registry, name: str, workdir: Path) -> images.Pushed:
    image = images.build_image(name, layer_sizes=(2048, 4096))
    return images.push(image, upstream, f"library/{name}", "latest", workdir=workdir)


def api_token(forge: Platform, username: str, *acls: str) -> str:
    args = [arg for acl in acls for arg in ("--acl", acl)]
    return forge.flask("token", "create", username, *args).stdout.strip().splitlines()[-1]


def manifest(forge: Platform, group: str, image: str, token: str) -> requests.Response:
    return requests.get(
        f"{forge.url}/v2/{forge.repository(group, image)}/manifests/latest",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )


def test_skopeo_and_ctr_pull_through_the_mixed_case_group_without_the_forges_cookie(
    forge: Platform,
    upstream: Registry,
    skopeo: Skopeo,
    containerd: Containerd,
    unique_name: str,
    tmp_path: Path,
) -> None:
    pushed = push(upstream, unique_name, tmp_path)
    reference = forge.image(IMAGE_GROUP, unique_name, "latest")

    checks.ok(skopeo.login(forge.host, "bob", PASSWORDS["bob"]))
    result, target = skopeo.copy_to_dir(reference)
    checks.ok(result)
    checks.same_as_upstream(target, pushed, upstream)

    # containerd: POST /jwt/auth with an API token of the forge (the pull_images ACL).
    checks.ok(containerd.pull(reference, "alice", api_token(forge, "alice", "pull_images")))
    listing = checks.ok(containerd.ctr("images", "check")).stdout
    line = next(line for line in listing.splitlines() if line.startswith(reference))
    assert pushed.digest in line and "complete (3/3)" in line, listing

    # The registry's answers never carry the forge's session cookie; its pages do.
    scope = f"repository:{forge.repository(IMAGE_GROUP, unique_name)}:pull"
    token = forge.token("bob", PASSWORDS["bob"], scope)
    answers = [token, manifest(forge, IMAGE_GROUP, unique_name, token.json()["token"])]
    answers.append(requests.get(f"{forge.url}/v2/", timeout=30))
    assert [a.status_code for a in answers] == [200, 200, 401]
    for answer in answers:
        assert "Set-Cookie" not in answer.headers, (answer.url, dict(answer.headers))
    assert "session=" in requests.get(f"{forge.url}/", timeout=30).headers["Set-Cookie"]


def test_docker_style_refresh_token_login_and_a_blocked_user(
    forge: Platform, upstream: Registry, unique_name: str, tmp_path: Path
) -> None:
    pushed = push(upstream, unique_name, tmp_path)
    scope = f"repository:{forge.repository(IMAGE_GROUP, unique_name)}:pull"
    # docker login: GET with Basic and offline_token=true; docker keeps the refresh token.
    login = requests.get(
        f"{forge.url}/jwt/auth",
        params={"service": SERVICE, "offline_token": "true", "client_id": "docker"},
        auth=("dave", PASSWORDS["dave"]),
        timeout=30,
    )
    assert login.status_code == 200, login.text
    form = {
        "grant_type": "refresh_token",
        "refresh_token": login.json()["refresh_token"],
        "service": SERVICE,
        "scope": scope,
        "client_id": "docker",
    }
    refreshed = requests.post(f"{forge.url}/jwt/auth", data=form, timeout=30)
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.json()["scope"] == scope
    pulled = manifest(forge, IMAGE_GROUP, unique_name, refreshed.json()["access_token"])
    assert pulled.status_code == 200 and pulled.content == pushed.manifest

    forge.flask("user", "block", "dave")
    refused = requests.post(f"{forge.url}/jwt/auth", data=form, timeout=30)
    assert refused.status_code == 401 and refused.json()["error"] == "invalid_grant"


def test_every_page_of_the_extension_in_chromium_under_the_forges_csp(
    browser: Browser, forge: Platform, upstream: Registry, unique_name: str, tmp_path: Path
) -> None:
    push(upstream, unique_name, tmp_path)
    token = forge.bearer("alice", PASSWORDS["alice"], IMAGE_GROUP, unique_name)
    cached = requests.get(
        f"{forge.url}/v2/{forge.repository(IMAGE_GROUP, unique_name)}/manifests/latest",
        headers=token,
        timeout=30,
    )
    assert cached.status_code == 200  # a cached image, for its delete page

    context = browser.new_context(base_url=forge.url)
    context.set_default_timeout(15_000)
    violations: list[str] = []
    context.expose_binding("reportViolation", lambda _source, text: violations.append(text))
    context.add_init_script(
        "document.addEventListener('securitypolicyviolation', (e) =>"
        " window.reportViolation(e.violatedDirective + ' ' + e.blockedURI + ' '"
        " + e.sourceFile + ':' + e.lineNumber));"
    )
    console: list[str] = []
    page = context.new_page()
    page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))

    # The extension's page sends an anonymous visitor to the forge's login, and back.
    page.goto(PAGE)
    assert "/login/" in page.url, page.url
    page.fill("input[name=username]", "alice")
    page.fill("input[name=password]", PASSWORDS["alice"])
    with page.expect_response(lambda r: r.url.endswith(PAGE)) as shown:
        page.click("main form button[type=submit]")
    policy = shown.value.headers["content-security-policy"]
    assert "script-src 'nonce-" in policy and "style-src 'nonce-" in policy, policy
    expect(page.locator("#dependency-proxy-state")).to_have_text("Enabled")
    _styled(page)

    # The copy button: the extension's one script, allowed by its nonce.
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=forge.url)
    prefix = page.inner_text("#dependency-proxy-prefix").strip()
    assert prefix == f"{forge.host}/{IMAGE_GROUP}/dependency_proxy/containers"
    page.click("#dependency-proxy-copy")
    expect(page.locator("#dependency-proxy-copy")).to_have_text("Copied")
    assert page.evaluate("navigator.clipboard.readText()") == prefix

    page.click("#dependency-proxy-clear")
    expect(page.locator("h1")).to_contain_text(f"Clear the Dependency Proxy cache of {GROUP}?")
    _styled(page)
    page.goto(f"{PAGE}/images/{unique_name}/delete")
    expect(page.locator("h1")).to_contain_text(f"Delete {unique_name} from")
    _styled(page)
    # The error page: a form sent without the extension's CSRF token.
    page.goto(PAGE)
    page.evaluate(
        "document.querySelectorAll('input[name=dependency_proxy_csrf_token]')"
        ".forEach((field) => field.remove())"
    )
    page.click("text=Save cleanup policy")
    expect(page.locator("h1")).to_have_text("Form rejected")
    # And the forge's own pages, under the same policy.
    page.goto("/group/DevOps")
    expect(page.locator("#forge-dependency-proxy")).to_be_visible()

    assert violations == [], violations
    assert not [line for line in console if "Content Security Policy" in line], console

    # The watch works: an inline style attribute is refused and reported.
    page.evaluate("document.body.setAttribute('style', 'color: red')")
    for _ in range(50):  # the report arrives through Playwright's event loop
        if violations:
            break
        page.wait_for_timeout(100)
    assert violations and violations[0].startswith("style-src"), violations
    context.close()


def _styled(page: Page) -> None:
    """The extension's stylesheet applied (a blocked one would leave no rounded badge)."""
    radius = page.evaluate(
        "(() => { const badge = document.querySelector('.dependency-proxy .badge')"
        " || document.createElement('span');"
        " badge.className = 'badge';"
        " (document.querySelector('.dependency-proxy') || document.body).appendChild(badge);"
        " return getComputedStyle(badge).borderTopLeftRadius; })()"
    )
    assert radius not in ("", "0px"), radius


def test_a_deleted_group_is_forgotten_and_the_group_that_gets_its_id_starts_clean(
    forge: Platform, upstream: Registry, skopeo: Skopeo, unique_name: str, tmp_path: Path
) -> None:
    push(upstream, unique_name, tmp_path)
    created = forge.flask("group", "create", "Scratch", "--owner", "alice").stdout
    group_id = int(re.search(r"\(id (\d+)\)", created).group(1))  # type: ignore[union-attr]
    forge.flask("dependency-proxy", "enable", "scratch")
    checks.ok(skopeo.login(forge.host, "alice", PASSWORDS["alice"]))
    checks.ok(skopeo.copy_to_dir(forge.image("scratch", unique_name, "latest"))[0])
    api = {"PRIVATE-TOKEN": api_token(forge, "alice", "group_modify")}
    listed = f"{forge.url}/api/v4/groups/{group_id}/dependency_proxy/manifests"
    assert len(requests.get(listed, headers=api, timeout=30).json()) == 1

    deleted = forge.flask("group", "delete", "Scratch").stdout
    assert "the Dependency Proxy forgot it" in deleted
    created = forge.flask("group", "create", "Fresh", "--owner", "alice").stdout
    assert f"(id {group_id})" in created  # SQLite gave it the deleted group's id

    settings = requests.get(
        f"{forge.url}/api/v4/groups/{group_id}/dependency_proxy/settings", headers=api, timeout=30
    )
    assert settings.status_code == 200, settings.text
    assert settings.json()["group_full_path"] == "Fresh"
    assert settings.json()["enabled"] is False
    assert settings.json()["quota"]["used_bytes"] == 0
    # The old cache is scheduled for deletion, as a purge does (cleanup deletes it):
    # nothing of it counts for the new group or is served to it.
    leftovers = requests.get(listed, headers=api, timeout=30).json()
    assert {item["status"] for item in leftovers} <= {"pending_destruction"}, leftovers
    # Once on, the new group fetches the image from upstream: nothing of the old is served.
    forge.flask("dependency-proxy", "enable", "fresh")
    mark = upstream.mark()
    checks.ok(skopeo.copy_to_dir(forge.image("fresh", unique_name, "latest"))[0])
    repository = f"library/{unique_name}"
    assert upstream.count("GET", repository=repository, kind="manifests", since=mark) == 1
    served = requests.get(listed, headers=api, timeout=30).json()
    assert [item["status"] for item in served].count("default") == 1, served
