"""Failed logins from one client address never lock anyone out elsewhere.

The live platform under gunicorn; each client binds its socket to its own loopback
address (all of 127.0.0.0/8 is local), so the platform sees it as ``remote_addr``.
Each test attacks from addresses of its own on one platform per module.
"""

from __future__ import annotations

import re
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import seed
from tests.support.addresses import client_at
from tests.support.databases import Databases
from tests.support.platform import Platform
from tests.support.processes import ProcessFactory

pytestmark = pytest.mark.e2e

#: PostgreSQL, the production setup, only: tests/unit/test_throttle.py runs the
#: limiter on both databases.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

#: Failures per username and address before that pair is refused (the default).
PAIR_LIMIT = 10
#: Failures per address, whatever the usernames; lower than the default to keep the test short.
ADDRESS_LIMIT = 20
WINDOW_SECONDS = 300
PROJECT = f"{seed.ACME}/app"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def login(address: str, platform: Platform, username: str, secret: str) -> requests.Response:
    """``GET /jwt/auth`` from ``address``, as ``docker login`` does."""
    with client_at(address) as client:
        return client.get(
            f"{platform.url}/jwt/auth",
            params={"service": "dependency_proxy"},
            auth=(username, secret),
            timeout=30,
        )


def _setup(platform: Platform) -> None:
    with platform.batch():
        seed.seed_minimal(platform)
        platform.setup_command("project", "create", PROJECT)


@pytest.fixture(scope="module")
def live(
    module_processes: ProcessFactory,
    databases: Databases,
    tmp_path_factory: pytest.TempPathFactory,
) -> t.Iterator[Platform]:
    platform = Platform(
        module_processes,
        tmp_path_factory.mktemp("lockout"),
        database_url=databases.create("lockout"),
        # Port 9 (discard) is closed: these tests never pull.
        upstream_url="http://127.0.0.1:9",
        name="lockout",
        extra_env={
            "DEPENDENCY_PROXY_LOGIN_MAX_FAILURES": str(PAIR_LIMIT),
            "DEPENDENCY_PROXY_LOGIN_MAX_FAILURES_PER_ADDRESS": str(ADDRESS_LIMIT),
            "DEPENDENCY_PROXY_LOGIN_FAILURE_WINDOW_SECONDS": str(WINDOW_SECONDS),
        },
    )
    _setup(platform)
    platform.start()
    yield platform
    platform.stop()


@pytest.fixture(scope="module")
def alice_pat(live: Platform) -> str:
    result = live.flask(
        "token", "create", seed.ALICE.username, "--scopes", "read_registry,write_registry"
    )
    return result.stdout.strip().splitlines()[-1]


def _assert_throttled(response: requests.Response) -> None:
    assert response.status_code == 429, (response.status_code, response.text)
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["errors"][0]["code"] == "TOOMANYREQUESTS"
    assert 0 < int(response.headers["Retry-After"]) <= WINDOW_SECONDS


def test_failed_job_logins_elsewhere_do_not_refuse_a_running_job(live: Platform) -> None:
    attacker = "127.0.0.2"
    for _ in range(PAIR_LIMIT):
        assert login(attacker, live, "gitlab-ci-token", "dpjob-guessed").status_code == 401
    _assert_throttled(login(attacker, live, "gitlab-ci-token", "dpjob-guessed"))

    # The job logs in from its runner's address, and from the attacker's address too:
    # a valid token is never refused.
    script = " ; ".join(
        f'curl -s -o /dev/null -w "{address}=%{{http_code}}\\n" --interface {address} '
        f'-u "gitlab-ci-token:$CI_JOB_TOKEN" "{live.url}/jwt/auth?service=dependency_proxy"'
        for address in ("127.0.0.3", attacker)
    )
    job = live.flask("ci", "run", PROJECT, "--user", seed.ALICE.username, "--", "sh", "-c", script)
    assert "127.0.0.3=200" in job.stdout, job.stdout + job.stderr
    assert f"{attacker}=200" in job.stdout, job.stdout + job.stderr


def test_failed_passwords_for_a_user_do_not_lock_out_the_user(
    live: Platform, alice_pat: str
) -> None:
    attacker, elsewhere = "127.0.0.4", "127.0.0.5"
    user = seed.ALICE.username
    for _ in range(PAIR_LIMIT):
        assert login(attacker, live, user, "wrong password").status_code == 401
    _assert_throttled(login(attacker, live, user, "wrong password"))

    assert login(elsewhere, live, user, seed.ALICE.password).status_code == 200
    assert login(elsewhere, live, user, alice_pat).status_code == 200
    # A personal access token cannot be guessed, so it works even from the attacker's address.
    assert login(attacker, live, user, alice_pat).status_code == 200
    # The attacker's address stays refused for this user, the right password included.
    _assert_throttled(login(attacker, live, user, seed.ALICE.password))


def test_an_address_that_tries_many_usernames_is_refused(live: Platform, alice_pat: str) -> None:
    attacker, elsewhere = "127.0.0.8", "127.0.0.9"
    log_start = len(live.process.log_text())
    for number in range(ADDRESS_LIMIT):
        assert login(attacker, live, f"guess{number}", "wrong password").status_code == 401
    _assert_throttled(login(attacker, live, "another-guess", "wrong password"))
    _assert_throttled(login(attacker, live, seed.ALICE.username, seed.ALICE.password))

    assert login(attacker, live, seed.ALICE.username, alice_pat).status_code == 200
    assert login(elsewhere, live, seed.ALICE.username, seed.ALICE.password).status_code == 200
    # The operator sees one line naming the address and the window, never a secret.
    log = live.process.log_text()[log_start:]
    lines = [line for line in log.splitlines() if attacker in line and "throttl" in line]
    assert len(lines) == 1, log
    assert f"{WINDOW_SECONDS} s" in lines[0]
    assert "wrong password" not in log and seed.ALICE.password not in log


def _sign_in(client: requests.Session, platform: Platform, password: str) -> requests.Response:
    form = client.get(f"{platform.url}/users/sign_in", timeout=30)
    found = _CSRF.search(form.text)
    assert found, form.text
    return client.post(
        f"{platform.url}/users/sign_in",
        data={
            "username": seed.ALICE.username,
            "password": password,
            "csrf_token": found.group(1),
        },
        allow_redirects=False,
        timeout=30,
    )


def test_web_sign_in_is_throttled_per_address(live: Platform, tmp_path: Path) -> None:
    attacker, elsewhere = "127.0.0.6", "127.0.0.7"
    with client_at(attacker) as client:
        answers = [_sign_in(client, live, "wrong password").status_code for _ in range(25)]
        assert answers[:PAIR_LIMIT] == [401] * PAIR_LIMIT
        assert set(answers[PAIR_LIMIT:]) == {429}
        refused = _sign_in(client, live, seed.ALICE.password)
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) > 0
        assert "Too many failed sign-ins" in refused.text
        assert 'name="password"' in refused.text

    with client_at(elsewhere) as client:
        signed_in = _sign_in(client, live, seed.ALICE.password)
        assert signed_in.status_code == 302, signed_in.text
        home = client.get(f"{live.url}/", timeout=30)
        assert f"Signed in as {seed.ALICE.username}" in home.text
