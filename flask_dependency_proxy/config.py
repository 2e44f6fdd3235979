"""Configuration keys, their defaults, and validation at ``init_app`` time.

Every key is read once, when the extension is registered; a bad value fails the
application's start instead of its first pull.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import typing as t
from urllib.parse import urlsplit

from .upstream.credentials import parse_keys
from .upstream.routing import DOCKER_HUB_URL, UpstreamEntry, docker_hub_entry

if t.TYPE_CHECKING:
    from flask import Flask

#: Switches every registry route of the extension on or off.
ENABLED = True
#: The upstream registries, a mapping (or its JSON text) from a name to an entry with
#: ``url`` (without credentials in it: ``init_app`` refuses ``https://user:token@host``),
#: and optionally ``hosts`` (registry host names that route an image name there),
#: ``username`` and ``password``, ``allow_private_redirects``, ``auth_hosts``
#: (hosts its token realm may be on besides its own) and ``library_prefix`` (Docker
#: Hub's ``library``). Groups use them in this order. ``None``: one entry made from
#: ``UPSTREAM_URL``, ``UPSTREAM_USERNAME`` and ``UPSTREAM_PASSWORD``.
UPSTREAMS: t.Any = None
#: Fernet keys, newest first (a list, its JSON text, or comma-separated), that encrypt
#: the credentials group owners give their upstreams. ``None``: one key derived from
#: ``SECRET_KEY``. See ``flask dependency-proxy rotate-credentials``.
CREDENTIAL_KEYS: tuple[str, ...] | None = None
#: The one upstream when ``UPSTREAMS`` is not set. Docker Hub by default. Credentials
#: go in ``UPSTREAM_USERNAME`` and ``UPSTREAM_PASSWORD``, never in the URL.
UPSTREAM_URL = DOCKER_HUB_URL
#: Optional credentials for that upstream (e.g. a paid Docker Hub account).
UPSTREAM_USERNAME: str | None = None
#: Its password or token.
UPSTREAM_PASSWORD: str | None = None
#: Seconds to wait for a TCP connection to the upstream.
UPSTREAM_CONNECT_TIMEOUT_SECONDS = 5.0
#: Seconds to wait between two reads from the upstream.
UPSTREAM_READ_TIMEOUT_SECONDS = 60.0
#: Extra attempts on a connection error, 5xx or 429 before a response has started.
UPSTREAM_RETRIES = 2
#: Connection failures in a row after which an upstream counts as down: it is not asked
#: (cached tags are served stale at once) for ``UPSTREAM_DOWN_SECONDS``, then tried
#: again; each failed try doubles the wait up to ``UPSTREAM_DOWN_MAX_SECONDS``. ``0``
#: never marks an upstream down.
UPSTREAM_DOWN_AFTER_FAILURES = 3
#: How long an upstream taken for down is not asked, at first.
UPSTREAM_DOWN_SECONDS = 5.0
#: The longest that wait grows to.
UPSTREAM_DOWN_MAX_SECONDS = 300.0
#: The URL clients use to reach this application (token realm, image prefix, CI
#: variables). ``None`` derives it from each request's host.
EXTERNAL_URL: str | None = None
#: How many reverse proxies sit in front of the app. With ``n > 0`` the whole WSGI app
#: is wrapped in Werkzeug's ``ProxyFix``, and the last ``n`` entries of
#: ``X-Forwarded-For``, ``-Proto`` and ``-Host`` give the client address (the login
#: throttle's key), the scheme and the host (the token realm). ``0`` believes none of them.
TRUSTED_PROXIES = 0
#: Folder of the filesystem blob store. ``None`` means ``<instance folder>/dependency_proxy``.
#: With object storage it keeps only what each host needs locally: the spool files of
#: fetches in progress, their lock files and the shared upstream tokens.
STORAGE_PATH: str | None = None
#: ``s3://BUCKET/PREFIX`` keeps blobs in S3-compatible object storage (needs
#: ``pip install 'flask-dependency-proxy[s3]'``); ``None`` keeps them under ``STORAGE_PATH``.
#: Credentials come from boto3's own chain (``AWS_ACCESS_KEY_ID`` and
#: ``AWS_SECRET_ACCESS_KEY``, a profile, an instance role), never from this config.
STORAGE_URL: str | None = None
#: The object store's endpoint (MinIO, SeaweedFS, Ceph, GCS); ``None`` is AWS S3.
S3_ENDPOINT_URL: str | None = None
#: The bucket's region; ``None`` leaves it to boto3 (``AWS_DEFAULT_REGION``, profile).
S3_REGION: str | None = None
#: ``path`` (``ENDPOINT/BUCKET/KEY``, what most self-hosted stores need), ``virtual``
#: (``BUCKET.ENDPOINT/KEY``) or ``auto`` (boto3 decides).
S3_ADDRESSING_STYLE = "auto"
#: Cached blobs answer ``307`` to a presigned URL of the object, so clients download
#: from the object store, as from Docker Hub's CDN. ``False`` streams them through the
#: proxy, for a store clients cannot reach.
S3_REDIRECT = True
#: How long a presigned blob URL stays valid.
S3_PRESIGN_SECONDS = 900
#: With ``S3_REDIRECT``, how long a worker trusts that a blob's object exists after a
#: ``HEAD`` found it or the worker committed it: hits in that time ask the object store
#: nothing before their redirect. An object deleted behind the cache's back fails
#: clients for at most this long; the next hit after it finds the object gone and
#: fetches the blob again. ``0`` checks on every hit. (Streamed hits need no check: a
#: missing object shows when it is opened.)
S3_VERIFY_SECONDS = 300.0
#: This host's own base URL as other hosts of the fleet reach it (an internal address,
#: e.g. ``http://10.0.0.5:8000``). Setting it turns on coordination through the
#: database: one upstream fetch per blob across every host that shares the database,
#: and clients on other hosts stream the bytes from the fetching host as they arrive.
PEER_URL: str | None = None
#: The port of a listener that only the other hosts of the fleet reach (with gunicorn, a
#: second ``bind``, e.g. ``-b 0.0.0.0:8000 -b 10.0.0.5:9100``): the peer route then
#: answers there alone (404 on every other listener), and ``PEER_URL`` names that
#: listener. The port is the one the WSGI server says it accepted the connection on
#: (``SERVER_PORT``; bind a TCP address, as with a unix socket gunicorn takes it from the
#: ``Host`` header). ``None`` serves the peer route on every listener: refuse
#: ``/-/dependency_proxy/peer/`` at the public front instead.
PEER_LISTENER_PORT: int | None = None
#: A host whose fetch lease was not renewed for this long is taken for dead, and
#: another host takes its fetch over (resuming upstream where the bytes stopped).
FETCH_LEASE_SECONDS = 10.0
#: Lifetime of a registry token, in seconds.
TOKEN_TTL = 900
#: Lifetime of a refresh token (docker's identity token), in seconds: how long a client
#: that logged in once with offline access gets registry tokens without its password.
#: Every refresh asks the host again, so blocking a user or revoking a token ends it at
#: once; a password change does not. ``0`` issues no refresh tokens.
REFRESH_TOKEN_TTL_SECONDS = 30 * 24 * 3600
#: Seconds during which a token's principal is trusted without asking the host again;
#: the bound on how long a blocked user or revoked token keeps pulling.
PRINCIPAL_RECHECK_SECONDS = 30
#: Seconds during which a tag is served from the cache without asking upstream.
#: ``0`` asks upstream (a free HEAD) on every tag pull.
TAG_CHECK_INTERVAL = 0
#: Serve a cached tag that upstream now answers 404 for (instead of 404).
SERVE_STALE_ON_UPSTREAM_NOT_FOUND = False
#: Whether a group whose owners never touched the setting has the proxy on.
GROUP_DEFAULT_ENABLED = False
#: Username that CI job tokens log in with.
JOB_TOKEN_USERNAME = "gitlab-ci-token"
#: Failed password logins per username and client address before that client's
#: further attempts for the username are refused (429 at ``/jwt/auth``). Valid tokens
#: are never refused. ``0`` turns throttling off.
LOGIN_MAX_FAILURES = 10
#: Failed password logins per client address, whatever the usernames, before every
#: password login from that address is refused. ``0`` turns this limit off.
LOGIN_MAX_FAILURES_PER_ADDRESS = 50
#: The window those failures are counted in; also the longest wait it imposes.
LOGIN_FAILURE_WINDOW_SECONDS = 300
#: Serve cached blobs through nginx: the internal location that maps to the store's
#: ``blobs/`` folder (e.g. ``/_dependency_proxy_blobs/``). Responses then carry
#: ``X-Accel-Redirect`` and no body. (For Apache's X-Sendfile use Flask's ``USE_X_SENDFILE``.)
X_ACCEL_REDIRECT_PREFIX: str | None = None
#: Cached blobs are written to the client in chunks of this many bytes. ``0`` hands the
#: file to the WSGI server's file wrapper instead (``sendfile`` under gunicorn): no copy
#: through the worker, the better choice when clients are on other machines. A client on
#: the same host then copies from page-cache pages rather than from cache-warm buffers,
#: and clients that spend their CPU hashing and unpacking (skopeo, podman, containerd)
#: pull 5-15 % slower; see ``benchmarks/README.md``.
BLOB_CHUNK_SIZE = 1024 * 1024
#: A blob response is cut off when the client takes longer than this to accept one write
#: (up to ``BLOB_CHUNK_SIZE`` bytes): a client that stopped reading, or one slower than a
#: chunk per this many seconds, frees its connection. Applied where the WSGI server
#: exposes the connection's socket (gunicorn); ``0`` never cuts a client off.
CLIENT_SEND_TIMEOUT_SECONDS = 120.0
#: Longest time one database phase of a request may take (its queries, the pool checkout
#: and a new connection included) before the request answers 503 ``UNAVAILABLE``. Enforced
#: under gevent (gunicorn's gevent worker, ``examples/gunicorn.conf.py``), where a timer
#: can interrupt a query waiting on a hung server; ``0`` sets no deadline. Elsewhere the
#: driver's ``connect_timeout`` and the pool's ``pool_timeout`` are the only bounds.
DATABASE_TIMEOUT_SECONDS = 5.0
#: Last-read times are written at most this often per row (they drive cleanup by days).
READ_TIME_GRANULARITY_SECONDS = 3600
# -- pages, REST API and cache life cycle --------------------------------------------
#: The host template the group pages extend; it must define ``title`` and ``content``
#: blocks and show flashed messages.
BASE_TEMPLATE = "base.html"
#: Where anonymous visitors of the pages go to sign in: an endpoint name
#: (``"auth.login"``) or a URL (``"/login"``, ``"https://sso.example.com/login"``); they
#: come back through ``?next=``. ``None``: Flask-Login's ``login_manager.unauthorized()``
#: when the app has Flask-Login, else a plain 401.
LOGIN_VIEW: str | None = None
#: Run cleanup periodically in a thread of each web process (single-host setups).
#: Elsewhere run ``flask dependency-proxy cleanup`` from cron.
CLEANUP_SCHEDULER = False
#: Seconds between two scheduled cleanups (shared by every process through the database).
CLEANUP_INTERVAL_SECONDS = 3600
#: Rows deleted per transaction by cleanup.
CLEANUP_BATCH_SIZE = 500
#: A blob file is deleted only when it was committed, and set aside without any row
#: claiming it, at least this many seconds ago: a fetch that just committed a file, or
#: a pull claiming one, gets this long to record its row. ``0`` turns that protection off.
CLEANUP_FILE_GRACE_SECONDS = 600
#: Seconds after a purge during which another purge of the same group answers 409.
PURGE_COOLDOWN_SECONDS = 3600
# -- quotas ----------------------------------------------------------------------------
#: Largest blob fetched from upstream, in bytes; larger ones are refused (403 ``DENIED``).
#: The default, 10 GiB, passes the largest layers of common images (CUDA, ML
#: frameworks) and stops a single pull from filling a disk. ``0`` sets no limit.
MAX_BLOB_SIZE = 10 * 1024**3
#: What new content does to a group over its size limit: ``evict`` marks the group's
#: least recently pulled manifests and blobs for deletion to make room; ``refuse``
#: answers 403 ``DENIED``. Cached content is served either way.
QUOTA_POLICY = "evict"
# -- operations ------------------------------------------------------------------------
#: Serve Prometheus metrics at ``/-/dependency_proxy/metrics`` (needs
#: ``pip install 'flask-dependency-proxy[metrics]'``). Under several worker processes
#: set ``PROMETHEUS_MULTIPROC_DIR`` (``examples/gunicorn.conf.py`` does) so every
#: worker counts.
METRICS_ENABLED = False
#: A scrape then needs ``Authorization: Bearer <token>``; ``None`` serves anyone who can
#: reach the route.
METRICS_TOKEN: str | None = None
#: Label cache outcomes with the group's path (one series per group: only for a
#: modest number of groups). Group paths name private groups, so this needs
#: ``METRICS_TOKEN``: ``init_app`` refuses it without one.
METRICS_GROUP_LABELS = False
#: One log line per registry request on the ``flask_dependency_proxy.requests`` logger
#: at INFO: ``keyvalue`` (``key=value`` pairs), ``json`` (one object per line) or ``off``.
REQUEST_LOG = "keyvalue"
#: Longest time ``/-/dependency_proxy/ready`` waits for the database and for the blob
#: store before it answers 503.
READY_TIMEOUT_SECONDS = 2.0

#: What every configuration key and its environment variable start with.
ENV_PREFIX = _PREFIX = "DEPENDENCY_PROXY_"


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """The validated configuration of one application."""

    enabled: bool
    upstreams: tuple[UpstreamEntry, ...]
    credential_keys: tuple[str, ...] | None
    upstream_url: str
    upstream_username: str | None
    upstream_password: str | None
    upstream_connect_timeout_seconds: float
    upstream_read_timeout_seconds: float
    upstream_retries: int
    upstream_down_after_failures: int
    upstream_down_seconds: float
    upstream_down_max_seconds: float
    external_url: str | None
    trusted_proxies: int
    storage_path: str
    storage_url: str | None
    s3_endpoint_url: str | None
    s3_region: str | None
    s3_addressing_style: str
    s3_redirect: bool
    s3_presign_seconds: int
    s3_verify_seconds: float
    peer_url: str | None
    peer_listener_port: int | None
    fetch_lease_seconds: float
    token_ttl: int
    refresh_token_ttl_seconds: int
    principal_recheck_seconds: float
    tag_check_interval: float
    serve_stale_on_upstream_not_found: bool
    group_default_enabled: bool
    job_token_username: str
    read_time_granularity_seconds: float
    login_max_failures: int
    login_max_failures_per_address: int
    login_failure_window_seconds: float
    x_accel_redirect_prefix: str | None
    blob_chunk_size: int
    client_send_timeout_seconds: float
    database_timeout_seconds: float
    # -- pages, REST API and cache life cycle --
    base_template: str
    login_view: str | None
    cleanup_scheduler: bool
    cleanup_interval_seconds: float
    cleanup_batch_size: int
    cleanup_file_grace_seconds: float
    purge_cooldown_seconds: float
    # -- quotas --
    max_blob_size: int
    quota_policy: str
    # -- operations --
    metrics_enabled: bool
    metrics_token: str | None
    metrics_group_labels: bool
    request_log: str
    ready_timeout_seconds: float


class ConfigError(ValueError):
    """A ``DEPENDENCY_PROXY_*`` key has a value the extension cannot use."""


def _defaults() -> dict[str, t.Any]:
    module = globals()
    return {
        f"{_PREFIX}{field.name.upper()}": module[field.name.upper()]
        for field in dataclasses.fields(ProxyConfig)
        if field.name.upper() in module
    }


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})

Coerce = t.Callable[[str, t.Any], t.Any]


def _boolean(key: str, value: t.Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ConfigError(f"{key} must be true or false, not {value!r}.")


def _number(kind: type[int] | type[float], minimum: float) -> Coerce:
    def coerce(key: str, value: t.Any) -> t.Any:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, not {value!r}.")
        try:
            number = kind(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, not {value!r}.") from None
        if number < minimum:
            raise ConfigError(f"{key} must be at least {minimum}, not {value!r}.")
        return number

    return coerce


def _url(key: str, value: t.Any, *, credentials_go: str | None = None) -> str:
    """An http(s) URL without query, fragment or credentials.

    :param credentials_go: where credentials belong instead, for the error message.
    """
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be a URL string, not {value!r}.")
    parts = urlsplit(value)
    if "@" in parts.netloc:
        # Never quoted: the URL holds a secret, which would be logged and shown to
        # every group owner with the upstream's URL.
        instead = f"; set {credentials_go} instead" if credentials_go else ""
        raise ConfigError(f"{key} must not carry credentials (user:password@host){instead}.")
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"{key} must be an http:// or https:// URL, not {value!r}.")
    if parts.query or parts.fragment:
        raise ConfigError(f"{key} must not have a query or fragment: {value!r}.")
    return value.rstrip("/")


def _optional(coerce: Coerce) -> Coerce:
    return lambda key, value: None if value in (None, "") else coerce(key, value)


def _port(key: str, value: t.Any) -> int:
    port = _number(int, 1)(key, value)
    if port > 65535:
        raise ConfigError(f"{key} must be a TCP port (1 to 65535), not {value!r}.")
    return t.cast(int, port)


def _text(what: str) -> Coerce:
    def coerce(key: str, value: t.Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{key} must be {what}, not {value!r}.")
        return value

    return coerce


def _folder(key: str, value: t.Any) -> str:
    if not isinstance(value, str | os.PathLike) or not os.fspath(value):
        raise ConfigError(f"{key} must be a folder path, not {value!r}.")
    return os.fspath(value)


def _chunk_size(key: str, value: t.Any) -> int:
    size = _number(int, 0)(key, value)
    if size and not _MIN_CHUNK <= size <= _MAX_CHUNK:
        raise ConfigError(
            f"{key} must be 0 (sendfile) or between {_MIN_CHUNK} and {_MAX_CHUNK} bytes, "
            f"not {value!r}."
        )
    return t.cast(int, size)


_MIN_CHUNK = 4096
_MAX_CHUNK = 64 * 1024 * 1024


def _choice(*allowed: str) -> Coerce:
    def coerce(key: str, value: t.Any) -> str:
        if not isinstance(value, str) or value.lower() not in allowed:
            raise ConfigError(f"{key} must be one of {', '.join(allowed)}, not {value!r}.")
        return value.lower()

    return coerce


_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_KEY_PREFIX = re.compile(r"[A-Za-z0-9._-]+(?:/[A-Za-z0-9._-]+)*")
_REGION = re.compile(r"[a-z0-9-]{1,64}")


def _storage_url(key: str, value: t.Any) -> str:
    """``s3://BUCKET`` or ``s3://BUCKET/PREFIX``, normalised without a trailing ``/``."""
    if not isinstance(value, str):
        raise ConfigError(f"{key} must be an s3://BUCKET/PREFIX URL, not {value!r}.")
    parts = urlsplit(value)
    prefix = parts.path.strip("/")
    if (
        parts.scheme != "s3"
        or not _BUCKET.fullmatch(parts.netloc)
        or parts.query
        or parts.fragment
        or (prefix and (not _KEY_PREFIX.fullmatch(prefix) or ".." in prefix.split("/")))
    ):
        raise ConfigError(
            f"{key} must be s3://BUCKET or s3://BUCKET/PREFIX (a valid bucket name, a"
            f" prefix of letters, digits, '.', '_', '-' and '/'), not {value!r}."
        )
    return f"s3://{parts.netloc}/{prefix}" if prefix else f"s3://{parts.netloc}"


def _region(key: str, value: t.Any) -> str:
    if not isinstance(value, str) or not _REGION.fullmatch(value):
        raise ConfigError(f"{key} must be a region name such as 'us-east-1', not {value!r}.")
    return value


_UPSTREAM_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
#: A registry host name as the first component of an image name: lower case, a dot.
_REGISTRY_HOST = re.compile(r"[a-z0-9]+(?:-+[a-z0-9]+)*(?:\.[a-z0-9]+(?:-+[a-z0-9]+)*)+")
_AUTH_HOST = re.compile(r"[a-z0-9]+(?:[.-]+[a-z0-9]+)*")
_NAMESPACE = re.compile(r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*")
_ENTRY_FIELDS = frozenset(
    {
        "url",
        "hosts",
        "username",
        "password",
        "allow_private_redirects",
        "auth_hosts",
        "library_prefix",
    }
)


def _upstreams(key: str, value: t.Any) -> tuple[UpstreamEntry, ...] | None:
    """A mapping from name to entry (or its JSON text); ``None`` for the shorthand."""
    if value in (None, ""):
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise ConfigError(f"{key} must be a JSON object: {exc}.") from None
    if not isinstance(value, t.Mapping) or not value:
        raise ConfigError(f"{key} must map upstream names to entries, not {value!r}.")
    entries = tuple(_upstream_entry(f"{key}[{name!r}]", name, item) for name, item in value.items())
    owners: dict[str, str] = {}
    for entry in entries:
        for host in entry.hosts:
            if host in owners:
                raise ConfigError(
                    f"{key}: the host {host!r} routes to both {owners[host]!r} and {entry.name!r}."
                )
            owners[host] = entry.name
    return entries


def _upstream_entry(where: str, name: t.Any, item: t.Any) -> UpstreamEntry:
    if not isinstance(name, str) or not _UPSTREAM_NAME.fullmatch(name):
        raise ConfigError(
            f"{where}: an upstream name is 1-64 lower-case letters, digits, '_' and '-'."
        )
    if not isinstance(item, t.Mapping):
        raise ConfigError(f"{where} must be an object with a 'url', not {item!r}.")
    unknown = sorted(set(item) - _ENTRY_FIELDS)
    if unknown:
        raise ConfigError(
            f"{where} has unknown fields {', '.join(map(repr, unknown))}; it takes "
            f"{', '.join(sorted(_ENTRY_FIELDS))}."
        )
    if "url" not in item:
        raise ConfigError(f"{where} needs a 'url'.")
    username = _optional(_text("a username"))(f"{where}.username", item.get("username"))
    password = _optional(_text("a password"))(f"{where}.password", item.get("password"))
    if bool(username) != bool(password):
        raise ConfigError(f"{where}: set both 'username' and 'password', or neither.")
    library_prefix = item.get("library_prefix")
    if library_prefix is not None and (
        not isinstance(library_prefix, str) or not _NAMESPACE.fullmatch(library_prefix)
    ):
        raise ConfigError(
            f"{where}.library_prefix must be a repository name component such as "
            f"'library', not {library_prefix!r}."
        )
    return UpstreamEntry(
        name=name,
        url=_url(f"{where}.url", item["url"], credentials_go="its 'username' and 'password'"),
        hosts=_host_list(f"{where}.hosts", item.get("hosts"), _REGISTRY_HOST),
        username=username,
        password=password,
        allow_private_redirects=_boolean(
            f"{where}.allow_private_redirects", item.get("allow_private_redirects", False)
        ),
        auth_hosts=_host_list(f"{where}.auth_hosts", item.get("auth_hosts"), _AUTH_HOST),
        library_prefix=library_prefix,
    )


def _host_list(key: str, value: t.Any, pattern: re.Pattern[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str) or not isinstance(value, t.Sequence):
        raise ConfigError(f"{key} must be a list of host names, not {value!r}.")
    for host in value:
        if not isinstance(host, str) or not pattern.fullmatch(host):
            raise ConfigError(
                f"{key}: {host!r} is not a lower-case host name"
                + (" with a dot (such as 'ghcr.io')." if pattern is _REGISTRY_HOST else ".")
            )
    return tuple(value)


def _credential_keys(key: str, value: t.Any) -> tuple[str, ...]:
    try:
        return parse_keys(key, value)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _shorthand_upstream(url: str, username: str | None, password: str | None) -> UpstreamEntry:
    """The one entry ``UPSTREAM_URL`` stands for: Docker Hub's (``dockerhub``) for its
    URL, else ``default``, with Docker Hub's ``library/`` rule kept for look-alikes."""
    if url == DOCKER_HUB_URL:
        return docker_hub_entry(username=username, password=password)
    return UpstreamEntry(
        name="default", url=url, username=username, password=password, library_prefix="library"
    )


def _location(key: str, value: t.Any) -> str:
    if not isinstance(value, str) or not value.startswith("/") or not value.endswith("/"):
        raise ConfigError(f"{key} must be a path that starts and ends with '/', not {value!r}.")
    return value


#: How each field of :class:`ProxyConfig` is read from ``DEPENDENCY_PROXY_<FIELD>``.
_FIELDS: dict[str, Coerce] = {
    "enabled": _boolean,
    "upstreams": _upstreams,
    "credential_keys": _optional(_credential_keys),
    "upstream_url": lambda key, value: _url(
        key, value, credentials_go=f"{_PREFIX}UPSTREAM_USERNAME and {_PREFIX}UPSTREAM_PASSWORD"
    ),
    "upstream_username": _optional(_text("a username")),
    "upstream_password": _optional(_text("a password")),
    "upstream_connect_timeout_seconds": _number(float, 0.001),
    "upstream_read_timeout_seconds": _number(float, 0.001),
    "upstream_retries": _number(int, 0),
    "upstream_down_after_failures": _number(int, 0),
    "upstream_down_seconds": _number(float, 0.001),
    "upstream_down_max_seconds": _number(float, 0.001),
    "external_url": _optional(_url),
    "trusted_proxies": _number(int, 0),
    "storage_path": _folder,
    "storage_url": _optional(_storage_url),
    "s3_endpoint_url": _optional(_url),
    "s3_region": _optional(_region),
    "s3_addressing_style": _choice("auto", "path", "virtual"),
    "s3_redirect": _boolean,
    "s3_presign_seconds": _number(int, 1),
    "s3_verify_seconds": _number(float, 0),
    "peer_url": _optional(_url),
    "peer_listener_port": _optional(_port),
    "fetch_lease_seconds": _number(float, 1),
    "token_ttl": _number(int, 1),
    "refresh_token_ttl_seconds": _number(int, 0),
    "principal_recheck_seconds": _number(float, 0),
    "tag_check_interval": _number(float, 0),
    "serve_stale_on_upstream_not_found": _boolean,
    "group_default_enabled": _boolean,
    "job_token_username": _text("a non-empty username"),
    "read_time_granularity_seconds": _number(float, 0),
    "login_max_failures": _number(int, 0),
    "login_max_failures_per_address": _number(int, 0),
    "login_failure_window_seconds": _number(float, 1),
    "x_accel_redirect_prefix": _optional(_location),
    "blob_chunk_size": _chunk_size,
    "client_send_timeout_seconds": _number(float, 0),
    "database_timeout_seconds": _number(float, 0),
    "base_template": _text("a template name, such as 'base.html'"),
    "login_view": _optional(_text("an endpoint name or a URL")),
    "cleanup_scheduler": _boolean,
    "cleanup_interval_seconds": _number(float, 1),
    "cleanup_batch_size": _number(int, 1),
    "cleanup_file_grace_seconds": _number(float, 0),
    "purge_cooldown_seconds": _number(float, 0),
    "max_blob_size": _number(int, 0),
    "quota_policy": _choice("evict", "refuse"),
    "metrics_enabled": _boolean,
    "metrics_token": _optional(_text("a token")),
    "metrics_group_labels": _boolean,
    "request_log": _choice("keyvalue", "json", "off"),
    "ready_timeout_seconds": _number(float, 0.1),
}


def load_config(app: Flask) -> ProxyConfig:
    """Apply defaults to ``app.config`` and validate every ``DEPENDENCY_PROXY_*`` key.

    :raises ConfigError: naming the key and what it accepts.
    """
    for key, value in _defaults().items():
        app.config.setdefault(key, value)
    if app.config[f"{_PREFIX}STORAGE_PATH"] is None:
        app.config[f"{_PREFIX}STORAGE_PATH"] = os.path.join(app.instance_path, "dependency_proxy")
    values = {
        name: coerce(f"{_PREFIX}{name.upper()}", app.config[f"{_PREFIX}{name.upper()}"])
        for name, coerce in _FIELDS.items()
    }
    if bool(values["upstream_username"]) != bool(values["upstream_password"]):
        raise ConfigError(
            f"Set both {_PREFIX}UPSTREAM_USERNAME and {_PREFIX}UPSTREAM_PASSWORD, or neither."
        )
    if values["upstreams"] is None:
        values["upstreams"] = (
            _shorthand_upstream(
                values["upstream_url"], values["upstream_username"], values["upstream_password"]
            ),
        )
    if values["peer_listener_port"] is not None and values["peer_url"] is None:
        raise ConfigError(
            f"{_PREFIX}PEER_LISTENER_PORT serves the peer route of a fleet: set"
            f" {_PREFIX}PEER_URL to the URL of that listener as the other hosts reach it."
        )
    if values["metrics_enabled"] and values["metrics_group_labels"] and not values["metrics_token"]:
        # Group paths name private groups; the route answers anyone who can reach it.
        raise ConfigError(
            f"{_PREFIX}METRICS_GROUP_LABELS puts group paths in the metrics: set"
            f" {_PREFIX}METRICS_TOKEN too, so only a scrape with the token sees them."
        )
    if values["upstream_down_max_seconds"] < values["upstream_down_seconds"]:
        raise ConfigError(
            f"{_PREFIX}UPSTREAM_DOWN_MAX_SECONDS must be at least {_PREFIX}UPSTREAM_DOWN_SECONDS."
        )
    return ProxyConfig(**values)
