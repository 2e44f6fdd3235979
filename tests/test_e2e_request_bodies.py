"""Large request bodies cost a worker nothing, whoever sends them.

Every route of the extension that takes a body is sent one far over its bound, with a
``Content-Length`` and chunked, anonymously and with valid credentials. The answer is
a ``413`` in the route's own format (or, where no body is read at all, the route's
usual refusal), and the gunicorn worker's peak memory (``VmHWM``, reset before each
request through ``/proc/PID/clear_refs``) stays where it was.
"""

from __future__ import annotations

import dataclasses
import re
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import seed
from tests.support.platform import Platform, PlatformFactory

pytestmark = pytest.mark.e2e

#: The subject is the WSGI input, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

GROUP = seed.ACME
OWNER = seed.Account("olga", "olga-password-0001")
#: Far over every bound (64 KiB at most); reading it whole would show at once.
BODY_BYTES = 32 * 1024 * 1024
#: What the worker's peak may grow by while it refuses such a body.
ALLOWED_GROWTH_KIB = 8 * 1024
CHUNK = b"a" * (1024 * 1024)


@dataclasses.dataclass
class Live:
    platform: Platform
    api_token: str
    #: A signed-in browser session of the group's owner.
    session: requests.Session


def _seed(platform: Platform) -> None:
    with platform.batch():
        seed.seed_minimal(platform)
        platform.create_user(OWNER.username, OWNER.password)
        platform.add_member(GROUP, OWNER.username, "owner")


def _sign_in(platform: Platform) -> requests.Session:
    session = requests.Session()
    page = session.get(f"{platform.url}/users/sign_in", timeout=30)
    found = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert found, page.text
    signed_in = session.post(
        f"{platform.url}/users/sign_in",
        data={"csrf_token": found.group(1), "username": OWNER.username, "password": OWNER.password},
        timeout=30,
    )
    assert signed_in.ok and OWNER.username in signed_in.text, signed_in.text[:500]
    return session


@pytest.fixture(scope="module")
def live(module_platform_factory: PlatformFactory) -> Live:
    # One worker: its memory is the one measured.
    platform = module_platform_factory("http://127.0.0.1:9", name="bodies", setup=_seed, workers=1)
    created = platform.flask("token", "create", OWNER.username, "--scopes", "api")
    return Live(platform, created.stdout.split()[-1], _sign_in(platform))


def _worker_pid(platform: Platform) -> int:
    master = platform.process.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def _peak_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert found, status
    return int(found.group(1))


def _reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def _body(prefix: bytes, chunked: bool) -> bytes | t.Iterator[bytes]:
    """``prefix`` then ``a`` up to :data:`BODY_BYTES`: all at once (``Content-Length``)
    or as a generator, which requests sends chunked."""
    if not chunked:
        return prefix + b"a" * (BODY_BYTES - len(prefix))

    def chunks() -> t.Iterator[bytes]:
        yield prefix
        for _ in range(BODY_BYTES // len(CHUNK)):
            yield CHUNK

    return chunks()


@dataclasses.dataclass(frozen=True)
class Surface:
    """One route that a body can be sent to, and how it refuses a large one."""

    method: str
    path: str
    content_type: str
    prefix: bytes
    status: int
    check: t.Callable[[requests.Response], None]
    #: Sign in: ``"session"``, ``"token"`` (PRIVATE-TOKEN), ``"basic"``, ``"bearer"``.
    auth: str | None = None
    #: A chunked body has no length to refuse at once: the route's own refusal, if it
    #: comes before the body is read.
    chunked_answer: tuple[int, t.Callable[[requests.Response], None]] | None = None


def _page_refusal(response: requests.Response) -> None:
    assert response.headers["Content-Type"].startswith("text/html")
    assert "Request too large" in response.text


def _api_refusal(response: requests.Response) -> None:
    assert response.json() == {"message": "413 Request Entity Too Large"}


def _api_unauthorized(response: requests.Response) -> None:
    assert response.json() == {"message": "401 Unauthorized"}


def _token_refusal(response: requests.Response) -> None:
    body = response.json()
    assert body["errors"][0]["code"] == "DENIED", body
    assert body["error"] == "invalid_request", body


def _registry_refusal(code: str) -> t.Callable[[requests.Response], None]:
    def check(response: requests.Response) -> None:
        assert response.json()["errors"][0]["code"] == code, response.text

    return check


def _operations_refusal(response: requests.Response) -> None:
    assert response.headers.get("Allow"), dict(response.headers)


PAGE = f"/groups/{GROUP}/-/dependency_proxy/settings"
API = f"/api/v4/groups/{GROUP}/dependency_proxy/settings"
UPLOADS = f"/v2/{GROUP}/dependency_proxy/containers/big/blobs/uploads/"
FORM = "application/x-www-form-urlencoded"

SURFACES = {
    "page-anonymous": Surface("POST", PAGE, FORM, b"enabled=1&x=", 413, _page_refusal),
    "page-owner": Surface("POST", PAGE, FORM, b"enabled=1&x=", 413, _page_refusal, "session"),
    "api-anonymous": Surface(
        "PUT",
        API,
        "application/json",
        b'{"enabled": "',
        413,
        _api_refusal,
        chunked_answer=(401, _api_unauthorized),
    ),
    "api-owner": Surface(
        "PUT", API, "application/json", b'{"enabled": "', 413, _api_refusal, "token"
    ),
    "token-anonymous": Surface(
        "POST", "/jwt/auth", FORM, b"grant_type=password&x=", 413, _token_refusal
    ),
    "token-basic": Surface(
        "POST", "/jwt/auth", FORM, b"grant_type=password&x=", 413, _token_refusal, "basic"
    ),
    "registry-anonymous": Surface(
        "POST", UPLOADS, "application/octet-stream", b"", 401, _registry_refusal("UNAUTHORIZED")
    ),
    "registry-bearer": Surface(
        "PUT",
        UPLOADS,
        "application/octet-stream",
        b"",
        405,
        _registry_refusal("UNSUPPORTED"),
        "bearer",
    ),
    "operations": Surface(
        "POST", "/-/dependency_proxy/ready", FORM, b"x=", 405, _operations_refusal
    ),
}


def _headers(live: Live, surface: Surface) -> tuple[dict[str, str], t.Any]:
    headers = {"Content-Type": surface.content_type}
    auth = None
    if surface.auth == "token":
        headers["PRIVATE-TOKEN"] = live.api_token
    elif surface.auth == "basic":
        auth = (OWNER.username, OWNER.password)
    elif surface.auth == "bearer":
        headers.update(live.platform.bearer(seed.ALICE.username, seed.ALICE.password, GROUP, "big"))
    return headers, auth


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("name", list(SURFACES))
def test_a_large_body_is_refused_without_being_read(live: Live, name: str, chunked: bool) -> None:
    surface = SURFACES[name]
    client = live.session if surface.auth == "session" else requests
    headers, auth = _headers(live, surface)
    if surface.auth == "session":
        # A signed-in owner: the page itself, not a login redirect, would answer.
        assert client.get(f"{live.platform.url}/groups/{GROUP}/-/dependency_proxy").ok
    pid = _worker_pid(live.platform)
    _reset_peak(pid)
    before = _peak_kib(pid)

    response = client.request(
        surface.method,
        f"{live.platform.url}{surface.path}",
        data=_body(surface.prefix, chunked),
        headers=headers,
        auth=auth,
        timeout=120,
    )

    grown = _peak_kib(pid) - before
    status, check = (surface.status, surface.check)
    if chunked and surface.chunked_answer is not None:
        status, check = surface.chunked_answer
    assert response.status_code == status, (name, response.status_code, response.text[:300])
    check(response)
    assert grown < ALLOWED_GROWTH_KIB, f"{name}: the worker's peak grew by {grown} KiB"
    # The same worker still answers.
    assert requests.get(f"{live.platform.url}/-/dependency_proxy/health", timeout=30).ok
    assert _worker_pid(live.platform) == pid


def test_a_body_within_the_bound_still_works(live: Live) -> None:
    """Chunked, as small clients may send it: the owner's settings change."""
    response = requests.put(
        f"{live.platform.url}{API}",
        data=iter([b'{"enabled": ', b"true}"]),
        headers={"Content-Type": "application/json", "PRIVATE-TOKEN": live.api_token},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.json()["enabled"] is True
