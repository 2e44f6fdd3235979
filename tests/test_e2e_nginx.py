"""The platform behind a real nginx with TLS, configured with the README's snippet.

One platform per setting of ``DEPENDENCY_PROXY_TRUSTED_PROXIES`` and module, each with
its own nginx in front and ``DEPENDENCY_PROXY_EXTERNAL_URL`` unset, so the realm, the
client address and the Host check all come from the request. Clients bind their
sockets to loopback addresses of their own (127.0.0.2, ...) so the throttle of each
test counts only its own failures.
"""

from __future__ import annotations

import itertools
import re
import typing as t
from pathlib import Path

import pytest
import requests

from flask_dependency_proxy.fetch.peer_tokens import PEER_BLOB_PATH, PeerTokens
from tests.support import checks, images, seed
from tests.support.addresses import client_at
from tests.support.clients import Skopeo
from tests.support.databases import Databases
from tests.support.nginx import Certificates, NginxFront, make_certificates
from tests.support.platform import Platform
from tests.support.processes import ProcessFactory
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e

#: The subject is the reverse proxy in front, not the database: PostgreSQL, the production
#: setup, only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

#: Failures an address may have in the window before its next login answers 429.
LIMIT = 10
USER = seed.ALICE
_usernames = itertools.count(1)


class Fronted(t.NamedTuple):
    platform: Platform
    front: NginxFront


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


def _fronted(
    processes: ProcessFactory,
    databases: Databases,
    directory: Path,
    upstream: Registry,
    certs: Certificates,
    trusted_proxies: int,
    *,
    peer: bool = False,
) -> Fronted:
    name = f"fronted-{trusted_proxies}"
    platform = Platform(
        processes,
        directory,
        database_url=databases.create(name),
        upstream_url=upstream.url,
        name=name,
        extra_env={
            "DEPENDENCY_PROXY_EXTERNAL_URL": "",
            "DEPENDENCY_PROXY_TRUSTED_PROXIES": str(trusted_proxies),
            "TRUSTED_HOSTS": "127.0.0.1",
            "DEPENDENCY_PROXY_LOGIN_MAX_FAILURES": str(LIMIT),
            "DEPENDENCY_PROXY_LOGIN_MAX_FAILURES_PER_ADDRESS": str(LIMIT),
            "DEPENDENCY_PROXY_LOGIN_FAILURE_WINDOW_SECONDS": "300",
        },
        peer=peer,
    )
    seed.seed_minimal(platform)
    platform.start()
    front = NginxFront(processes, directory / "nginx", platform.port, certs).start()
    return Fronted(platform, front)


@pytest.fixture(scope="module")
def trusted(
    module_processes: ProcessFactory,
    databases: Databases,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: Registry,
    certs: Certificates,
) -> t.Iterator[Fronted]:
    """``DEPENDENCY_PROXY_TRUSTED_PROXIES=1``: the setting the README gives for its
    snippet, on a host of a fleet (``PEER_URL`` set), so it has a peer route."""
    fronted = _fronted(
        module_processes,
        databases,
        tmp_path_factory.mktemp("trusted"),
        upstream,
        certs,
        1,
        peer=True,
    )
    yield fronted
    fronted.front.stop()
    fronted.platform.stop()


@pytest.fixture(scope="module")
def untrusted(
    module_processes: ProcessFactory,
    databases: Databases,
    tmp_path_factory: pytest.TempPathFactory,
    upstream: Registry,
    certs: Certificates,
) -> t.Iterator[Fronted]:
    """The default, ``DEPENDENCY_PROXY_TRUSTED_PROXIES=0``, behind the same nginx snippet."""
    fronted = _fronted(
        module_processes, databases, tmp_path_factory.mktemp("untrusted"), upstream, certs, 0
    )
    yield fronted
    fronted.front.stop()
    fronted.platform.stop()


def login(
    base_url: str,
    address: str,
    username: str,
    password: str,
    *,
    ca: Path | None = None,
    headers: t.Mapping[str, str] | None = None,
) -> requests.Response:
    """``GET /jwt/auth`` with HTTP Basic from ``address``, as ``docker login`` does."""
    with client_at(address) as client:
        return client.get(
            f"{base_url}/jwt/auth",
            params={"service": "dependency_proxy"},
            auth=(username, password),
            headers=dict(headers or {}),
            verify=str(ca) if ca else True,
            timeout=30,
        )


def fail_logins(
    base_url: str,
    address: str,
    *,
    ca: Path | None = None,
    forged_for: t.Callable[[int], str] | None = None,
) -> None:
    """``LIMIT`` failed logins from ``address``, each for another username (so only the
    address's count can refuse the next one)."""
    for number in range(LIMIT):
        headers = {"X-Forwarded-For": forged_for(number)} if forged_for else None
        response = login(
            base_url, address, f"nobody{next(_usernames)}", "wrong", ca=ca, headers=headers
        )
        assert response.status_code == 401, (number, response.status_code, response.text)


def assert_throttled(response: requests.Response) -> None:
    checks.registry_error(response, 429, "TOOMANYREQUESTS")


def realm(response: requests.Response) -> str:
    found = re.search(r'realm="([^"]+)"', response.headers["WWW-Authenticate"])
    assert found, response.headers
    return found.group(1)


# -- with DEPENDENCY_PROXY_TRUSTED_PROXIES=1 -------------------------------------------


def test_the_challenge_names_the_https_front(trusted: Fronted, certs: Certificates) -> None:
    front = trusted.front
    response = requests.get(f"{front.url}/v2/", verify=str(certs.ca), timeout=30)
    checks.registry_error(response, 401, "UNAUTHORIZED")
    assert realm(response) == f"{front.url}/jwt/auth"
    token = login(front.url, "127.0.0.1", USER.username, USER.password, ca=certs.ca)
    assert token.status_code == 200, token.text


def test_skopeo_pulls_through_the_https_front(
    trusted: Fronted,
    certs: Certificates,
    upstream: Registry,
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    image = images.build_image(unique_name, layer_sizes=(40_000, 90_000))
    pushed = images.push(image, upstream, f"nginx/{unique_name}", "1", workdir=tmp_path)
    front = trusted.front
    cert_dir = str(certs.cert_dir)
    checks.ok(
        skopeo.run(
            "login",
            "--cert-dir",
            cert_dir,
            "--authfile",
            str(skopeo.authfile),
            "-u",
            USER.username,
            "-p",
            USER.password,
            front.host,
        )
    )
    target = tmp_path / "pulled"
    reference = f"{front.host}/{trusted.platform.repository(seed.ACME, pushed.repository)}:1"
    checks.ok(
        skopeo.run(
            "copy",
            "--quiet",
            "--retry-times",
            "0",
            "--src-cert-dir",
            cert_dir,
            "--authfile",
            str(skopeo.authfile),
            f"docker://{reference}",
            f"dir:{target}",
        )
    )
    checks.same_as_upstream(target, pushed, upstream)


def test_the_front_does_not_pass_the_peer_route_on(
    trusted: Fronted, certs: Certificates, upstream: Registry, unique_name: str, tmp_path: Path
) -> None:
    """nginx connects from an address a fleet host may share (here 127.0.0.1, the host's
    own): a peer token seen on the wire and replayed through the front would pass the
    route's address check, so the front must not reach the route at all."""
    image = images.build_image(unique_name, layer_sizes=(20_000,))
    pushed = images.push(image, upstream, f"nginx/{unique_name}", "1", workdir=tmp_path)
    platform = trusted.platform
    layer = pushed.layer_digests[0]
    headers = platform.bearer(USER.username, USER.password, seed.ACME, pushed.repository)
    cached = requests.get(
        f"{platform.url}/v2/{platform.repository(seed.ACME, pushed.repository)}/blobs/{layer}",
        headers=headers,
        timeout=30,
    )
    assert cached.status_code == 200
    # What another host of the fleet on this machine sends for the blob.
    token = PeerTokens([platform.env["SECRET_KEY"]], "http://127.0.0.1:1").issue(
        platform.url, layer, 0
    )
    peer = {"Authorization": f"Bearer {token}"}
    path = f"{PEER_BLOB_PATH}{layer}"

    direct = requests.get(f"{platform.url}{path}", headers=peer, timeout=30)
    fronted = requests.get(
        f"{trusted.front.url}{path}", headers=peer, verify=str(certs.ca), timeout=30
    )
    encoded = requests.get(
        f"{trusted.front.url}/-/dependency_proxy/%70eer/blobs/{layer}",
        headers=peer,
        verify=str(certs.ca),
        timeout=30,
    )

    assert direct.status_code == 200 and direct.content == cached.content
    assert fronted.status_code == 404 and cached.content not in fronted.content
    assert encoded.status_code == 404 and cached.content not in encoded.content


def test_client_addresses_behind_nginx_are_told_apart(
    trusted: Fronted, certs: Certificates
) -> None:
    front = trusted.front
    attacker, bystander = "127.0.0.2", "127.0.0.3"
    fail_logins(front.url, attacker, ca=certs.ca)
    assert_throttled(login(front.url, attacker, "nobody-else", "wrong", ca=certs.ca))

    refused = login(front.url, bystander, "nobody-else", "wrong", ca=certs.ca)
    checks.registry_error(refused, 401, "UNAUTHORIZED")
    signed_in = login(front.url, bystander, USER.username, USER.password, ca=certs.ca)
    assert signed_in.status_code == 200, signed_in.text


def test_a_forged_forwarded_for_does_not_move_the_throttle(
    trusted: Fronted, certs: Certificates
) -> None:
    front = trusted.front
    attacker, bystander = "127.0.0.4", "127.0.0.5"
    # Each failure claims to come from somewhere else; nginx overwrites the claim.
    fail_logins(front.url, attacker, ca=certs.ca, forged_for=lambda n: f"198.51.100.{n + 1}")
    assert_throttled(
        login(
            front.url,
            attacker,
            "nobody-else",
            "wrong",
            ca=certs.ca,
            headers={"X-Forwarded-For": bystander},
        )
    )
    checks.registry_error(
        login(front.url, bystander, "nobody-else", "wrong", ca=certs.ca), 401, "UNAUTHORIZED"
    )


def test_a_host_not_in_trusted_hosts_is_refused(trusted: Fronted, certs: Certificates) -> None:
    front, backend = trusted.front, trusted.platform
    for base, verify in ((front.url, str(certs.ca)), (backend.url, True)):
        for path in ("/v2/", "/v2/acme/dependency_proxy/containers/x/manifests/1", "/jwt/auth"):
            response = requests.get(
                f"{base}{path}", headers={"Host": "evil.example"}, verify=verify, timeout=30
            )
            checks.registry_error(response, 400, "DENIED")
            assert "WWW-Authenticate" not in response.headers
            assert "evil.example" not in response.headers.get("Location", "")
    # The host's own pages keep the host's answer.
    page = requests.get(
        f"{backend.url}/users/sign_in", headers={"Host": "evil.example"}, timeout=30
    )
    assert page.status_code == 400
    assert not page.headers["Content-Type"].startswith("application/json")


# -- with DEPENDENCY_PROXY_TRUSTED_PROXIES=0 (the default) -----------------------------


def test_without_trusted_proxies_forwarded_headers_are_ignored(untrusted: Fronted) -> None:
    backend = untrusted.platform
    forged = {"X-Forwarded-Host": "evil.example", "X-Forwarded-For": "198.51.100.7"}
    response = requests.get(f"{backend.url}/v2/", headers=forged, timeout=30)
    assert realm(response) == f"{backend.url}/jwt/auth"

    attacker, bystander = "127.0.0.6", "127.0.0.7"
    fail_logins(backend.url, attacker, forged_for=lambda n: f"198.51.100.{n + 1}")
    assert_throttled(
        login(backend.url, attacker, "nobody-else", "wrong", headers={"X-Forwarded-For": bystander})
    )
    checks.registry_error(
        login(backend.url, bystander, "nobody-else", "wrong"), 401, "UNAUTHORIZED"
    )


def test_without_trusted_proxies_clients_behind_nginx_share_its_address(
    untrusted: Fronted, certs: Certificates
) -> None:
    """Why the README's snippet comes with ``TRUSTED_PROXIES=1``: without it the address
    nginx sets is ignored, and every client counts as nginx."""
    front = untrusted.front
    fail_logins(front.url, "127.0.0.8", ca=certs.ca)
    assert_throttled(login(front.url, "127.0.0.9", "nobody-else", "wrong", ca=certs.ca))
