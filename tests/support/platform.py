"""The example host platform (``examples/platform``) run for real: gunicorn started with
the shipped ``examples/gunicorn.conf.py`` (the production serving model), two worker
processes, configured through the environment, set up with its own CLI.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import typing as t
from pathlib import Path

import requests

from .processes import LiveProcess, ProcessFactory, free_port, http_probe

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_IMPORT = "examples.platform"
#: The gunicorn configuration the README recommends for production.
GUNICORN_CONF = REPO_ROOT / "examples" / "gunicorn.conf.py"
#: The one place the proxy lives in an image path.
PROXY_SEGMENT = "dependency_proxy/containers"


class CommandFailed(AssertionError):
    """A platform CLI command exited with an error."""


#: Runs CLI commands (JSON argument lists) in one process: the platform's app is made
#: once, where ``flask`` would make it again for every command.
_RUN_COMMANDS = """
import importlib, json, sys, traceback
runner = importlib.import_module(sys.argv[2]).create_app().test_cli_runner()
for args in json.loads(sys.argv[1]):
    result = runner.invoke(args=args)
    sys.stdout.write(result.output)
    if result.exit_code != 0:
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            traceback.print_exception(result.exception)
        sys.exit(f"$ flask {' '.join(args)}: exit code {result.exit_code}")
"""
_CLEANUP_LATER = """
import datetime as dt, sys
from examples.platform import create_app
from flask_dependency_proxy import state
hours = float(sys.argv[1])
app = create_app()
with app.app_context():
    later = lambda: dt.datetime.now(dt.UTC).replace(tzinfo=None) + dt.timedelta(hours=hours)
    print(state(app).lifecycle.with_clock(later).cleanup().summary())
"""


@dataclasses.dataclass
class CommandBatch:
    """Setup commands held back by :meth:`Platform.batch`; ``output`` is what they
    printed, once they ran."""

    commands: list[list[str]] = dataclasses.field(default_factory=list)
    output: str = ""


class PlatformFactory(t.Protocol):
    """Starts a seeded platform on a new database (the ``platform_factory`` fixtures)."""

    def __call__(
        self,
        upstream_url: str,
        *,
        name: str = ...,
        setup: t.Callable[[Platform], None] = ...,
        extra_env: t.Mapping[str, str] | None = ...,
        gunicorn_args: t.Sequence[str] = ...,
        workers: int = ...,
    ) -> Platform: ...


class Platform:
    """One platform instance: its database, blob store, environment and gunicorn.

    :param processes: owns gunicorn.
    :param directory: the blob store and the instance folder live here.
    :param database_url: SQLAlchemy URL of an empty database of its own.
    :param upstream_url: ``DEPENDENCY_PROXY_UPSTREAM_URL``.
    :param extra_env: more settings, e.g. ``DEPENDENCY_PROXY_UPSTREAM_RETRIES``.
    :param gunicorn_args: more gunicorn options, after the shipped configuration's.
    :param peer: coordinate fetches with the other hosts on the database
        (``DEPENDENCY_PROXY_PEER_URL`` is this platform's URL).
    :param as_shipped: run gunicorn as ``examples/gunicorn.conf.py`` tells operators to,
        ``gunicorn -c examples/gunicorn.conf.py -b ADDRESS APP`` and nothing else (its
        own worker count and timeouts; ``workers`` and ``gunicorn_args`` are not used).
    :param app_import: the example host's package, with its ``create_app()`` and its CLI
        (``examples.forge`` for the forge).
    """

    def __init__(
        self,
        processes: ProcessFactory,
        directory: Path,
        *,
        database_url: str,
        upstream_url: str,
        name: str = "platform",
        extra_env: t.Mapping[str, str] | None = None,
        workers: int = 2,
        gunicorn_args: t.Sequence[str] = (),
        peer: bool = False,
        as_shipped: bool = False,
        app_import: str = APP_IMPORT,
    ) -> None:
        self.name = name
        self.app_import = app_import
        self.workers = workers
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.store_path = directory / "store"
        self.database_url = database_url
        self.upstream_url = upstream_url
        env = dict(os.environ)
        # The platform's configuration is the environment; nothing from the outer shell
        # that could change it leaks in.
        for key in list(env):
            if key.startswith(("DEPENDENCY_PROXY_", "FLASK_")) or key in {
                "DATABASE_URL",
                "SECRET_KEY",
            }:
                del env[key]
        env.update(
            {
                "DATABASE_URL": database_url,
                "SECRET_KEY": f"test-secret-{self.port}",
                "DEPENDENCY_PROXY_UPSTREAM_URL": upstream_url,
                "DEPENDENCY_PROXY_STORAGE_PATH": str(self.store_path),
                "DEPENDENCY_PROXY_EXTERNAL_URL": self.url,
                "PYTHONUNBUFFERED": "1",
            }
        )
        if peer:
            # A host of a fleet: other hosts reach its fetches at its own address.
            env["DEPENDENCY_PROXY_PEER_URL"] = self.url
        env.update(extra_env or {})
        self.env = env
        #: CLI commands held back by :meth:`batch`.
        self._batch: CommandBatch | None = None
        argv: list[str] = [sys.executable, "-m", "gunicorn"]
        if as_shipped:
            argv += ["-c", str(GUNICORN_CONF.relative_to(REPO_ROOT)), "-b", self.host]
        else:
            argv += [
                "--config",
                str(GUNICORN_CONF),
                "--bind",
                self.host,
                "--workers",
                str(workers),
                "--graceful-timeout",
                "5",
                *gunicorn_args,
            ]
        self.process: LiveProcess = processes.create(
            name, [*argv, f"{app_import}:create_app()"], env=env, cwd=REPO_ROOT
        )

    # -- addresses ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT``, the registry part of an image reference."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def image(self, group: str, image: str, reference: str | None = None) -> str:
        """``HOST/GROUP/dependency_proxy/containers/IMAGE`` with ``:TAG`` or ``@DIGEST``."""
        name = f"{self.host}/{group}/{PROXY_SEGMENT}/{image}"
        if reference is None:
            return name
        return f"{name}@{reference}" if ":" in reference else f"{name}:{reference}"

    def repository(self, group: str, image: str) -> str:
        """The repository part of a registry URL: ``GROUP/dependency_proxy/containers/IMAGE``."""
        return f"{group}/{PROXY_SEGMENT}/{image}"

    # -- CLI ---------------------------------------------------------------------------

    def flask(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run ``flask --app APP_IMPORT ARGS`` with the platform's environment."""
        argv = [sys.executable, "-m", "flask", "--app", self.app_import, *args]
        result = subprocess.run(
            argv,
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        if check and result.returncode != 0:
            raise CommandFailed(
                f"$ flask --app {self.app_import} {' '.join(args)}\nexit code {result.returncode}\n"
                f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
            )
        return result

    def cleanup_later(self, hours: float) -> str:
        """Run cleanup in the platform's environment with its clock ``hours`` ahead, so
        what a killed fetch left counts as stale without waiting; the summary."""
        return subprocess.run(
            [sys.executable, "-c", _CLEANUP_LATER, str(hours)],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout

    @contextlib.contextmanager
    def batch(self) -> t.Iterator[CommandBatch]:
        """Hold back the setup commands issued inside (:meth:`init_db`,
        :meth:`create_user`, ...) and run them at the end, in order, in one process:
        seeding a platform then starts its app once instead of once per command. A batch
        inside a batch joins the outer one."""
        if self._batch is not None:
            yield self._batch
            return
        batch = self._batch = CommandBatch()
        try:
            yield batch
        finally:
            self._batch = None
        if batch.commands:
            result = subprocess.run(
                [sys.executable, "-c", _RUN_COMMANDS, json.dumps(batch.commands), self.app_import],
                env=self.env,
                cwd=REPO_ROOT,
                capture_output=True,
                text=True,
                timeout=300,
                stdin=subprocess.DEVNULL,
            )
            if result.returncode != 0:
                raise CommandFailed(
                    f"batched commands failed: {result.stderr.strip()}\n--- stdout\n{result.stdout}"
                )
            batch.output = result.stdout

    def setup_command(self, *args: str) -> None:
        """Run ``flask ARGS`` now, or with the batch when inside :meth:`batch`."""
        if self._batch is not None:
            self._batch.commands.append(list(args))
        else:
            self.flask(*args)

    def init_db(self) -> None:
        self.setup_command("init-db")

    def create_user(self, username: str, password: str, *, admin: bool = False) -> None:
        self.setup_command(
            "user", "create", username, "--password", password, *(["--admin"] if admin else [])
        )

    def create_group(self, full_path: str, *, private: bool = False) -> None:
        self.setup_command("group", "create", full_path, *(["--private"] if private else []))

    def add_member(self, full_path: str, username: str, role: str) -> None:
        self.setup_command("group", "add-member", full_path, username, "--role", role)

    def enable_proxy(self, full_path: str) -> None:
        self.setup_command("dependency-proxy", "enable", full_path)

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Platform:
        """Start gunicorn; ready once ``GET /v2/`` answers 401 (the login challenge)."""
        self.process.start(ready=http_probe(f"{self.url}/v2/", status=401), timeout=timeout)
        return self

    def stop(self) -> None:
        self.process.stop()

    def sibling(self, processes: ProcessFactory, name: str, *, workers: int = 1) -> Platform:
        """A second host of this platform: its own gunicorn and port, on the same
        database, blob store and ``SECRET_KEY`` (tokens of one are good on the other)."""
        twin = Platform(
            processes,
            self.directory / name,
            database_url=self.database_url,
            upstream_url=self.upstream_url,
            name=name,
            workers=workers,
            extra_env={
                **{
                    key: value
                    for key, value in self.env.items()
                    if key.startswith("DEPENDENCY_PROXY_")
                    and key != "DEPENDENCY_PROXY_EXTERNAL_URL"
                },
                "SECRET_KEY": self.env["SECRET_KEY"],
            },
        )
        twin.store_path = self.store_path
        return twin

    # -- HTTP --------------------------------------------------------------------------

    def token(self, username: str, password: str, scope: str | None = None) -> requests.Response:
        """``GET /jwt/auth`` with HTTP Basic, as docker clients log in."""
        params = {"service": "dependency_proxy"}
        if scope is not None:
            params["scope"] = scope
        return requests.get(
            f"{self.url}/jwt/auth", params=params, auth=(username, password), timeout=30
        )

    def bearer(self, username: str, password: str, group: str, image: str) -> dict[str, str]:
        """Headers with a pull token for ``group``'s proxy of ``image``."""
        response = self.token(
            username, password, f"repository:{self.repository(group, image)}:pull"
        )
        assert response.status_code == 200, (response.status_code, response.text)
        return {"Authorization": f"Bearer {response.json()['token']}"}

    def store_files(self) -> list[Path]:
        """Every file in the blob store (committed and staging)."""
        if not self.store_path.exists():
            return []
        return sorted(p for p in self.store_path.rglob("*") if p.is_file())

    def store_files_for(self, digest: str) -> list[Path]:
        """Files in the blob store whose name carries this digest's hex part."""
        hex_ = digest.partition(":")[2]
        return [p for p in self.store_files() if hex_ in p.name]

    @property
    def object_storage(self) -> bool:
        """Whether blobs live in S3-compatible object storage rather than on disk."""
        return bool(self.env.get("DEPENDENCY_PROXY_STORAGE_URL"))

    def stored_blobs_for(self, digest: str) -> list[bytes]:
        """The committed copies of a blob, on disk or in the bucket (at most one), and
        what a fetch left in the local spool folder for it."""
        hex_ = digest.partition(":")[2]
        if not self.object_storage:
            return [p.read_bytes() for p in self.store_files_for(digest)]
        import boto3
        from botocore.config import Config

        bucket, _, prefix = self.env["DEPENDENCY_PROXY_STORAGE_URL"][5:].partition("/")
        client = boto3.client(
            "s3",
            endpoint_url=self.env["DEPENDENCY_PROXY_S3_ENDPOINT_URL"],
            region_name=self.env["DEPENDENCY_PROXY_S3_REGION"],
            aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            config=Config(s3={"addressing_style": "path"}),
        )
        key = "/".join(filter(None, [prefix, "blobs", "sha256", hex_[:2], hex_]))
        try:
            found = [client.get_object(Bucket=bucket, Key=key)["Body"].read()]
        except client.exceptions.NoSuchKey:
            found = []
        return found + [p.read_bytes() for p in self.store_files_for(digest)]
