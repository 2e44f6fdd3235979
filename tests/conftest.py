"""Fixtures for the whole suite.

- ``database_url`` is parametrized over SQLite and PostgreSQL, so every test that uses a
  database (directly or through ``app`` or ``platform``) runs on both.
- ``upstream``/``token_upstream`` are real ``docker-registry`` processes; ``platform`` is
  the example host platform under gunicorn; ``skopeo``/``podman`` are the real clients.
- ``app``/``client``/``runner`` are the in-process platform for fast tests (pytest-flask).
- When a test fails, its report shows the tail of every live process's log.
- A test that leaves an app or request context pushed fails (the leak detector).
- ``--fast`` runs only the tests that need no external process (see :func:`needs_process`).
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import sys
import tempfile
import typing as t
from pathlib import Path

import pytest

from flask_dependency_proxy.admin.periodic import PeriodicJob
from tests.support import postgres, processes, seed
from tests.support.clients import Podman, Skopeo, podman_unusable
from tests.support.databases import Databases
from tests.support.platform import Platform, PlatformFactory
from tests.support.processes import ProcessFactory
from tests.support.registry import Registry, TokenAuth
from tests.support.seaweedfs import SeaweedFS, seaweedfs_unavailable
from tests.support.tokenserver import TokenServer, TokenUpstream

if t.TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskCliRunner

#: Per-test time limits (pytest-timeout) unless a test sets its own ``timeout`` marker.
#: They include fixture setup, so an e2e test that starts the session's platform has time.
DEFAULT_TIMEOUT_SECONDS = 60
E2E_TIMEOUT_SECONDS = 300


#: A memory file system for the fast lane's temporary files, where there is one.
_MEMORY_TEMP = "/dev/shm"

#: Fixtures that start a process (directly, or through one of these): a test that uses
#: one is left out of the fast lane. Registries, platforms and token upstreams start
#: theirs through the process factories.
PROCESS_FIXTURES = frozenset(
    {
        "session_processes",
        "module_processes",
        "live_process",
        "postgres_cluster",
        "seaweedfs",
        "skopeo",
        "podman",
        "browser",
    }
)


# -- hooks ---------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fast",
        action="store_true",
        help="run only the tests that need no external process (no registry, gunicorn,"
        " skopeo, podman, PostgreSQL, SeaweedFS or browser): the fast lane",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """Set up the fast lane: a test in it that starts a process fails (so the lane stays
    free of them), and temporary files go to memory (``/dev/shm``) unless ``--basetemp``
    says otherwise, since its tests spend much of their time in SQLite commits, whose
    ``fsync`` a disk shared with other work makes slow. In every lane, the periodic
    jobs of in-process apps end with the test that started them."""
    _record_started_jobs()
    if not config.getoption("fast"):
        return
    sys.addaudithook(_refuse_processes)
    if config.option.basetemp is not None:
        return
    if not (os.path.isdir(_MEMORY_TEMP) and os.access(_MEMORY_TEMP, os.W_OK)):
        return
    basetemp = tempfile.mkdtemp(prefix="fdp-fast-", dir=_MEMORY_TEMP)
    config.option.basetemp = basetemp
    config.add_cleanup(lambda: shutil.rmtree(basetemp, ignore_errors=True))


#: The test running now, in the fast lane (for :func:`_refuse_processes`).
_fast_lane_test: list[str] = []
_PROCESS_EVENTS = frozenset({"subprocess.Popen", "os.posix_spawn", "os.system", "os.exec"})


def _refuse_processes(event: str, args: tuple[t.Any, ...]) -> None:
    """Fail a fast-lane test that starts a process: it needs the ``process`` marker."""
    if event in _PROCESS_EVENTS and _fast_lane_test:
        raise RuntimeError(
            f"{_fast_lane_test[-1]} starts a process ({str(args[0])[:80] if args else event})"
            " in the fast lane: mark it @pytest.mark.process"
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(
    item: pytest.Item, nextitem: pytest.Item | None
) -> t.Generator[None, object, object]:
    if not item.config.getoption("fast"):
        return (yield)
    _fast_lane_test.append(item.nodeid)
    try:
        return (yield)
    finally:
        _fast_lane_test.pop()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _drop_unwanted_combinations(config, items)
    if config.getoption("fast"):
        _keep_the_fast_lane(config, items)
    for item in items:
        if item.get_closest_marker("timeout") is None:
            limit = (
                E2E_TIMEOUT_SECONDS if item.get_closest_marker("e2e") else DEFAULT_TIMEOUT_SECONDS
            )
            item.add_marker(pytest.mark.timeout(limit))


def _drop_unwanted_combinations(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out the parameter combinations a module lists in ``UNWANTED_COMBINATIONS``
    (each a mapping of fixture name to parameter): two session parameters cross with a
    module's own, and not every cell of that product tests something the others do not."""
    kept: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        unwanted = getattr(getattr(item, "module", None), "UNWANTED_COMBINATIONS", ())
        params = getattr(getattr(item, "callspec", None), "params", {})
        if any(all(params.get(k) == v for k, v in combo.items()) for combo in unwanted):
            dropped.append(item)
        else:
            kept.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


def needs_process(item: pytest.Item) -> bool:
    """Whether a test needs an external process: it is marked ``e2e`` or ``process``, uses
    a fixture that starts one (:data:`PROCESS_FIXTURES`), or runs on PostgreSQL."""
    if item.get_closest_marker("e2e") or item.get_closest_marker("process"):
        return True
    if PROCESS_FIXTURES.intersection(getattr(item, "fixturenames", ())):
        return True
    params = getattr(getattr(item, "callspec", None), "params", {})
    return bool(params.get("database_backend") == "postgresql")


def _keep_the_fast_lane(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect every test that needs an external process (``--fast``)."""
    kept = [item for item in items if not needs_process(item)]
    if len(kept) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if needs_process(item)])
        items[:] = kept


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> t.Generator[None, None, None]:
    # Show only what a process logged during this test (processes started by the test
    # itself are shown from their first line).
    processes.RECENTLY_STOPPED.clear()
    for process in processes.RUNNING:
        process.mark_log()
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> t.Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.failed:
        for process in [*processes.RUNNING, *processes.RECENTLY_STOPPED]:
            text = process.tail(80, process.log_mark) or "(nothing logged during this test)"
            report.sections.append((f"{process.name} log tail ({process.log_path})", text))
    return report


#: The periodic jobs (bookkeeping, cleanup, refresh) that in-process apps started during
#: the test that runs now.
_started_jobs: list[PeriodicJob[t.Any]] = []


def _record_started_jobs() -> None:
    """Note every periodic job an in-process app starts (with its first request), so the
    test that started it stops it. Left running, the job of a finished test's app would
    write to a database that test stopped, and log the failure into a later test's
    captured log. A job stopped here starts again with its app's next request."""
    start = PeriodicJob._ensure_started

    def recorded(job: PeriodicJob[t.Any]) -> None:
        if job._pid != os.getpid():
            _started_jobs.append(job)
        start(job)

    PeriodicJob._ensure_started = recorded  # type: ignore[method-assign]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(
    item: pytest.Item, nextitem: pytest.Item | None
) -> t.Generator[None, None, None]:
    """Stop the periodic jobs the test's apps started, before its fixtures (databases
    among them) are torn down; then fail a test that leaves a Flask app or request
    context pushed (after every fixture, pytest-flask's own pushed context included,
    has been torn down)."""
    while _started_jobs:
        _started_jobs.pop().stop(timeout=5)
    result = yield
    from flask.globals import _cv_app, _cv_request

    leaked: list[object] = []
    while (request_ctx := _cv_request.get(None)) is not None:
        leaked.append(request_ctx)
        request_ctx.pop()
    while (app_ctx := _cv_app.get(None)) is not None:
        leaked.append(app_ctx)
        app_ctx.pop()
    if leaked:
        raise AssertionError(f"{item.nodeid} left contexts pushed: {leaked!r}")
    return result


# -- processes -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def session_processes(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[ProcessFactory]:
    """Starts processes that live for the whole session; stops them at its end."""
    factory = ProcessFactory(tmp_path_factory.mktemp("session-logs"))
    yield factory
    factory.stop_all()


@pytest.fixture
def live_process(tmp_path: Path) -> t.Iterator[ProcessFactory]:
    """A factory for processes that live for one test (logs in the test's tmp dir)."""
    factory = ProcessFactory(tmp_path / "logs")
    yield factory
    factory.stop_all()


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> t.Iterator[ProcessFactory]:
    factory = ProcessFactory(tmp_path_factory.mktemp("module-logs"))
    yield factory
    factory.stop_all()


# -- object storage ------------------------------------------------------------------


@pytest.fixture(scope="session")
def seaweedfs(
    session_processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[SeaweedFS]:
    """A real S3-compatible object store for the session; ``new_bucket()`` per test."""
    reason = seaweedfs_unavailable()
    if reason:
        pytest.fail(f"SeaweedFS is needed for the object-storage tests: {reason}")
    server = SeaweedFS(session_processes, tmp_path_factory.mktemp("seaweedfs")).start()
    yield server
    server.stop()


# -- databases -----------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_cluster(session_processes: ProcessFactory) -> t.Iterator[postgres.PostgresCluster]:
    reason = postgres.available()
    if reason:
        pytest.fail(f"PostgreSQL is needed for the postgresql half of the suite: {reason}")
    cluster = postgres.PostgresCluster(session_processes).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_backend(request: pytest.FixtureRequest) -> str:
    return t.cast(str, request.param)


@pytest.fixture(scope="session")
def databases(
    database_backend: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> t.Iterator[Databases]:
    cluster = (
        request.getfixturevalue("postgres_cluster") if database_backend == "postgresql" else None
    )
    manager = Databases(
        database_backend, tmp_path_factory.mktemp(f"db-{database_backend}"), cluster
    )
    yield manager
    manager.drop_all()


@pytest.fixture(scope="session")
def database_url(databases: Databases) -> str:
    """One database per backend for the session (the session's ``platform`` uses it)."""
    return databases.create("session")


@pytest.fixture
def fresh_database_url(databases: Databases) -> t.Iterator[str]:
    """An empty database of the current backend for this test only."""
    url = databases.create("fn")
    yield url
    databases.drop(url)


# -- in-process platform (pytest-flask) ----------------------------------------------


@pytest.fixture
def app_factory(databases: Databases, tmp_path: Path) -> t.Iterator[t.Callable[..., Flask]]:
    """Make in-process platform apps, each on a new database with its tables created.

    ``app_factory(DEPENDENCY_PROXY_UPSTREAM_URL=upstream.url)``
    """
    from examples.platform import create_app

    made: list[tuple[Flask, str]] = []

    def make(**config: t.Any) -> Flask:
        url = databases.create("app")
        number = len(made) + 1
        settings = {
            "TESTING": True,
            "SECRET_KEY": "test-secret",
            "DATABASE_URL": url,
            "SQLALCHEMY_DATABASE_URI": url,
            # Port 9 (discard) is closed: nothing reaches a real upstream by accident.
            "DEPENDENCY_PROXY_UPSTREAM_URL": "http://127.0.0.1:9",
            "DEPENDENCY_PROXY_STORAGE_PATH": str(tmp_path / f"store-{number}"),
            # scrypt is slow on purpose; tests make many users.
            "PASSWORD_HASH_METHOD": "pbkdf2:sha256:1000",
            **config,
        }
        flask_app = create_app(settings)
        result = flask_app.test_cli_runner().invoke(args=["init-db"])
        assert result.exit_code == 0, result.output
        made.append((flask_app, url))
        return flask_app

    yield make
    for flask_app, url in made:
        sqlalchemy_ext = flask_app.extensions.get("sqlalchemy")
        if sqlalchemy_ext is not None:
            with flask_app.app_context():
                for engine in sqlalchemy_ext.engines.values():
                    engine.dispose()
        databases.drop(url)


@pytest.fixture
def app(app_factory: t.Callable[..., Flask]) -> Flask:
    """The example platform in process, on a new database (pytest-flask's ``app``)."""
    return app_factory()


@pytest.fixture
def runner(app: Flask) -> FlaskCliRunner:
    return app.test_cli_runner()


# -- upstream registries -------------------------------------------------------------


@pytest.fixture(scope="session")
def upstream(
    session_processes: ProcessFactory, tmp_path_factory: pytest.TempPathFactory
) -> Registry:
    """A plain upstream registry shared by the session (push unique image names)."""
    return Registry(session_processes, tmp_path_factory.mktemp("upstream")).start()


@pytest.fixture
def upstream_factory(live_process: ProcessFactory, tmp_path: Path) -> t.Callable[..., Registry]:
    """Start plain registries that belong to one test."""
    counter = itertools.count(1)

    def make(name: str = "upstream") -> Registry:
        return Registry(live_process, tmp_path / f"{name}-{next(counter)}", name=name).start()

    return make


@pytest.fixture
def token_upstream(live_process: ProcessFactory, tmp_path: Path) -> t.Iterator[TokenUpstream]:
    """A registry with token auth like Docker Hub's, and its token server."""
    token_server = TokenServer(tmp_path / "token-server", users={"pusher": "pusher-password"})
    token_server.start()
    try:
        registry = Registry(
            live_process,
            tmp_path / "token-upstream",
            name="token-upstream",
            token_auth=TokenAuth(token_server.realm, token_server.bundle_path),
        ).start()
        yield TokenUpstream(registry, token_server, ("pusher", "pusher-password"))
    finally:
        token_server.stop()


# -- the live platform ---------------------------------------------------------------


@pytest.fixture(scope="session")
def platform(
    session_processes: ProcessFactory,
    tmp_path_factory: pytest.TempPathFactory,
    database_url: str,
    database_backend: str,
    upstream: Registry,
) -> t.Iterator[Platform]:
    """The example platform under gunicorn, shared by the session (one per database
    backend), set up with :func:`tests.support.seed.seed_full`."""
    live = Platform(
        session_processes,
        tmp_path_factory.mktemp(f"platform-{database_backend}"),
        database_url=database_url,
        upstream_url=upstream.url,
        name=f"platform-{database_backend}",
    )
    seed.seed_full(live)
    live.start()
    yield live
    live.stop()


def _platform_maker(
    processes: ProcessFactory, directory: Path, databases: Databases
) -> PlatformFactory:
    """Start a platform on a new database of its own, set up by ``setup`` (the minimal
    seed by default); its processes stop with ``processes``."""
    counter = itertools.count(1)

    def make(
        upstream_url: str,
        *,
        name: str = "platform",
        setup: t.Callable[[Platform], None] = seed.seed_minimal,
        extra_env: t.Mapping[str, str] | None = None,
        gunicorn_args: t.Sequence[str] = (),
        workers: int = 2,
    ) -> Platform:
        label = f"{name}-{next(counter)}"
        live = Platform(
            processes,
            directory / label,
            database_url=databases.create(name),
            upstream_url=upstream_url,
            name=label,
            extra_env=extra_env,
            gunicorn_args=gunicorn_args,
            workers=workers,
        )
        setup(live)
        return live.start()

    return make


@pytest.fixture
def platform_factory(
    live_process: ProcessFactory, databases: Databases, tmp_path: Path
) -> PlatformFactory:
    """Start platforms that belong to one test:
    ``platform_factory(upstream_url, setup=seed.seed_minimal, extra_env={...}, workers=4)``."""
    return _platform_maker(live_process, tmp_path, databases)


@pytest.fixture(scope="module")
def module_platform_factory(
    module_processes: ProcessFactory,
    databases: Databases,
    tmp_path_factory: pytest.TempPathFactory,
) -> PlatformFactory:
    """Start platforms that a module's tests share, as :func:`platform_factory` does."""
    return _platform_maker(module_processes, tmp_path_factory.mktemp("platforms"), databases)


# -- clients -------------------------------------------------------------------------


@pytest.fixture
def skopeo(tmp_path: Path) -> Skopeo:
    """skopeo with its own auth file, logged in nowhere."""
    return Skopeo(tmp_path / "skopeo")


@pytest.fixture
def podman(tmp_path: Path) -> t.Iterator[Podman]:
    """podman with all of its state in the test's tmp dir.

    If podman cannot run here the test fails (it does not skip): the machines this
    suite runs on are expected to run it.
    """
    client = Podman(tmp_path / "podman")
    try:
        reason = podman_unusable(client)
        if reason:
            pytest.fail(f"podman cannot run on this machine:\n{reason}")
        yield client
    finally:
        client.close()


# -- names ---------------------------------------------------------------------------

_names = itertools.count(1)


@pytest.fixture
def unique_name(request: pytest.FixtureRequest) -> str:
    """An image name component no other test uses (valid in the registry grammar)."""
    slug = re.sub(r"[^a-z0-9]+", "-", request.node.originalname.lower()).strip("-")
    slug = re.sub(r"^test-?", "", slug)[:40].strip("-") or "image"
    return f"{slug}-{os.getpid()}-{next(_names)}"
