"""Every configuration key, declared once: a field of :class:`ProxyConfig` whose
``#:`` comment documents the key (``docs/_ext/configtable.py`` turns the comments into
the configuration page) and whose :func:`_key` carries the default and the parser.

Every key is read once, when the extension is registered; a bad value fails the
application's start instead of its first pull.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import typing as t
from urllib.parse import urlsplit

from ..upstream.routing import DOCKER_HUB_URL, UpstreamEntry
from .parsers import (
    ConfigError,
    Parser,
    block_name,
    boolean,
    choice,
    chunk_size,
    fernet_keys,
    folder,
    function,
    http_url,
    location,
    number,
    optional,
    port,
    readable_file,
    readable_files,
    region,
    s3_url,
    signers_document,
    text,
)
from .upstreams import mirror_hosts, shorthand_upstream, upstream_entries

if t.TYPE_CHECKING:
    from flask import Flask

#: What every configuration key and its environment variable start with.
ENV_PREFIX = "DEPENDENCY_PROXY_"


def _key(default: t.Any, parse: Parser) -> t.Any:
    """A field read from ``DEPENDENCY_PROXY_<FIELD>``: ``default`` is what ``app.config``
    gets when the host sets nothing (shown on the configuration page), ``parse`` turns
    the value there into the field's."""
    return dataclasses.field(metadata={"default": default, "parse": parse})


_UPSTREAM_URL = functools.partial(
    http_url,
    credentials_go=f"{ENV_PREFIX}UPSTREAM_USERNAME and {ENV_PREFIX}UPSTREAM_PASSWORD",
)


@dataclasses.dataclass(frozen=True)
class ProxyConfig:
    """The validated configuration of one application: one field per key, named as the
    key without its prefix. The defaults in :func:`_key` are what ``app.config`` gets,
    before parsing; every field is required here, and :func:`load_config` fills them."""

    #: Switches every registry route of the extension on or off.
    enabled: bool = _key(True, boolean)
    #: The upstream registries, a mapping (or its JSON text) from a name to an entry with
    #: ``url`` (without credentials in it: ``init_app`` refuses ``https://user:token@host``),
    #: and optionally ``hosts`` (registry host names that route an image name there),
    #: ``username`` and ``password``, ``allow_private_redirects``, ``auth_hosts``
    #: (hosts its token realm may be on besides its own) and ``library_prefix`` (Docker
    #: Hub's ``library``, the default of an entry whose ``hosts`` include ``docker.io``;
    #: ``null`` for none). Groups use them in this order. ``None``: one entry made from
    #: ``UPSTREAM_URL``, ``UPSTREAM_USERNAME`` and ``UPSTREAM_PASSWORD``.
    upstreams: tuple[UpstreamEntry, ...] = _key(None, upstream_entries)
    #: Fernet keys, newest first (a list, its JSON text, or comma-separated), that encrypt
    #: the credentials group owners give their upstreams. ``None``: one key derived from
    #: ``SECRET_KEY``. See ``flask dependency-proxy rotate-credentials``.
    credential_keys: tuple[str, ...] | None = _key(None, optional(fernet_keys))
    #: The one upstream when ``UPSTREAMS`` is not set. Docker Hub by default. Credentials
    #: go in ``UPSTREAM_USERNAME`` and ``UPSTREAM_PASSWORD``, never in the URL.
    upstream_url: str = _key(DOCKER_HUB_URL, _UPSTREAM_URL)
    #: Optional credentials for that upstream (e.g. a paid Docker Hub account).
    upstream_username: str | None = _key(None, optional(text("a username")))
    #: Its password or token.
    upstream_password: str | None = _key(None, optional(text("a password")))
    #: Seconds to wait for a TCP connection to the upstream.
    upstream_connect_timeout_seconds: float = _key(5.0, number(float, 0.001))
    #: Seconds to wait between two reads from the upstream.
    upstream_read_timeout_seconds: float = _key(60.0, number(float, 0.001))
    #: Extra attempts on a connection error, 5xx or 429 before a response has started.
    upstream_retries: int = _key(2, number(int, 0))
    #: Connection failures in a row after which an upstream counts as down: it is not asked
    #: (cached tags are served stale at once) for ``UPSTREAM_DOWN_SECONDS``, then tried
    #: again; each failed try doubles the wait up to ``UPSTREAM_DOWN_MAX_SECONDS``. ``0``
    #: never marks an upstream down.
    upstream_down_after_failures: int = _key(3, number(int, 0))
    #: How long an upstream taken for down is not asked, at first.
    upstream_down_seconds: float = _key(5.0, number(float, 0.001))
    #: The longest that wait grows to.
    upstream_down_max_seconds: float = _key(300.0, number(float, 0.001))
    #: The URL clients use to reach this application (token realm, image prefix, CI
    #: variables). ``None`` derives it from each request's host.
    external_url: str | None = _key(None, optional(http_url))
    #: Host names that serve one group each as a Docker Hub mirror, a mapping (or its JSON
    #: text) from a host name (with an optional port) to a group path, e.g.
    #: ``{"mirror.example.com": "acme"}``: requests that arrive with that ``Host`` name
    #: images as Docker Hub does (``/v2/library/alpine/...``) and are served as the group's
    #: proxy through the upstream entry whose ``hosts`` include ``docker.io``, with the
    #: token challenge on that host name and the group's access rules. What Docker's
    #: ``registry-mirrors`` needs (it refuses a mirror URL with a group path in it). Give
    #: the app each name (DNS, and Flask's ``TRUSTED_HOSTS`` when set); behind a proxy the
    #: ``Host`` must reach the app (``proxy_set_header Host $host``, or
    #: ``TRUSTED_PROXIES`` and ``X-Forwarded-Host``). ``None``: none.
    mirror_hosts: dict[str, str] = _key(None, mirror_hosts)
    #: How many reverse proxies sit in front of the app. With ``n > 0`` the whole WSGI app
    #: is wrapped in Werkzeug's ``ProxyFix``, and the last ``n`` entries of
    #: ``X-Forwarded-For``, ``-Proto`` and ``-Host`` give the client address (the login
    #: throttle's key), the scheme and the host (the token realm). ``0`` believes none of them.
    trusted_proxies: int = _key(0, number(int, 0))
    #: Folder of the filesystem blob store. ``None`` means ``<instance folder>/dependency_proxy``.
    #: With object storage it keeps only what each host needs locally: the spool files of
    #: fetches in progress, their lock files and the shared upstream tokens.
    storage_path: str = _key(None, folder)
    #: ``s3://BUCKET/PREFIX`` keeps blobs in S3-compatible object storage (needs
    #: ``pip install 'flask-dependency-proxy[s3]'``); ``None`` keeps them under ``STORAGE_PATH``.
    #: Credentials come from boto3's own chain (``AWS_ACCESS_KEY_ID`` and
    #: ``AWS_SECRET_ACCESS_KEY``, a profile, an instance role), never from this config.
    storage_url: str | None = _key(None, optional(s3_url))
    #: The object store's endpoint (MinIO, SeaweedFS, Ceph, GCS); ``None`` is AWS S3.
    s3_endpoint_url: str | None = _key(None, optional(http_url))
    #: The bucket's region; ``None`` leaves it to boto3 (``AWS_DEFAULT_REGION``, profile).
    s3_region: str | None = _key(None, optional(region))
    #: ``path`` (``ENDPOINT/BUCKET/KEY``, what most self-hosted stores need), ``virtual``
    #: (``BUCKET.ENDPOINT/KEY``) or ``auto`` (boto3 decides).
    s3_addressing_style: str = _key("auto", choice("auto", "path", "virtual"))
    #: Cached blobs answer ``307`` to a presigned URL of the object, so clients download
    #: from the object store, as from Docker Hub's CDN. ``False`` streams them through the
    #: proxy, for a store clients cannot reach.
    s3_redirect: bool = _key(True, boolean)
    #: How long a presigned blob URL stays valid.
    s3_presign_seconds: int = _key(900, number(int, 1))
    #: With ``S3_REDIRECT``, how long a worker trusts that a blob's object exists after a
    #: ``HEAD`` found it or the worker committed it: hits in that time ask the object store
    #: nothing before their redirect. An object deleted behind the cache's back fails
    #: clients for at most this long; the next hit after it finds the object gone and
    #: fetches the blob again. ``0`` checks on every hit. (Streamed hits need no check: a
    #: missing object shows when it is opened.)
    s3_verify_seconds: float = _key(300.0, number(float, 0))
    #: This host's own base URL as other hosts of the fleet reach it (an internal address,
    #: e.g. ``http://10.0.0.5:8000``). Setting it turns on coordination through the
    #: database: one upstream fetch per blob across every host that shares the database,
    #: and clients on other hosts stream the bytes from the fetching host as they arrive.
    peer_url: str | None = _key(None, optional(http_url))
    #: The port of a listener that only the other hosts of the fleet reach (with gunicorn, a
    #: second ``bind``, e.g. ``-b 0.0.0.0:8000 -b 10.0.0.5:9100``): the peer route then
    #: answers there alone (404 on every other listener), and ``PEER_URL`` names that
    #: listener. The port is the one the WSGI server says it accepted the connection on
    #: (``SERVER_PORT``; bind a TCP address, as with a unix socket gunicorn takes it from the
    #: ``Host`` header). ``None`` serves the peer route on every listener: refuse
    #: ``/-/dependency_proxy/peer/`` at the public front instead.
    peer_listener_port: int | None = _key(None, optional(port))
    #: A host whose fetch lease was not renewed for this long is taken for dead, and
    #: another host takes its fetch over (resuming upstream where the bytes stopped).
    fetch_lease_seconds: float = _key(10.0, number(float, 1))
    #: Lifetime of a registry token, in seconds.
    token_ttl: int = _key(900, number(int, 1))
    #: Lifetime of a refresh token (docker's identity token), in seconds: how long a client
    #: that logged in once with offline access gets registry tokens without its password.
    #: Every refresh asks the host again, so blocking a user or revoking a token ends it at
    #: once; a password change does not. ``0`` issues no refresh tokens.
    refresh_token_ttl_seconds: int = _key(30 * 24 * 3600, number(int, 0))
    #: Seconds during which a token's principal is trusted without asking the host again;
    #: the bound on how long a blocked user or revoked token keeps pulling.
    principal_recheck_seconds: float = _key(30, number(float, 0))
    #: Seconds during which a tag is served from the cache without asking upstream.
    #: ``0`` asks upstream (a free HEAD) on every tag pull.
    tag_check_interval: float = _key(0, number(float, 0))
    #: Serve a cached tag that upstream now answers 404 for (instead of 404).
    serve_stale_on_upstream_not_found: bool = _key(False, boolean)
    #: Whether a group whose owners never touched the setting has the proxy on.
    group_default_enabled: bool = _key(False, boolean)
    #: Username that CI job tokens log in with.
    job_token_username: str = _key("gitlab-ci-token", text("a non-empty username"))
    #: Last-read times are written at most this often per row (they drive cleanup by days).
    read_time_granularity_seconds: float = _key(3600, number(float, 0))
    #: Failed password logins per username and client address before that client's
    #: further attempts for the username are refused (429 at ``/jwt/auth``). Valid tokens
    #: are never refused. ``0`` turns throttling off.
    login_max_failures: int = _key(10, number(int, 0))
    #: Failed password logins per client address, whatever the usernames, before every
    #: password login from that address is refused. ``0`` turns this limit off.
    login_max_failures_per_address: int = _key(50, number(int, 0))
    #: The window those failures are counted in; also the longest wait it imposes.
    login_failure_window_seconds: float = _key(300, number(float, 1))
    #: Serve cached blobs through nginx: the internal location that maps to the store's
    #: ``blobs/`` folder (e.g. ``/_dependency_proxy_blobs/``). Responses then carry
    #: ``X-Accel-Redirect`` and no body. (For Apache's X-Sendfile use Flask's ``USE_X_SENDFILE``.)
    x_accel_redirect_prefix: str | None = _key(None, optional(location))
    #: Cached blobs are written to the client in chunks of this many bytes. ``0`` hands the
    #: file to the WSGI server's file wrapper instead (``sendfile`` under gunicorn): no copy
    #: through the worker, the better choice when clients are on other machines. A client on
    #: the same host then copies from page-cache pages rather than from cache-warm buffers,
    #: and clients that spend their CPU hashing and unpacking (skopeo, podman, containerd)
    #: pull 5-15 % slower; see ``benchmarks/README.md``.
    blob_chunk_size: int = _key(1024 * 1024, chunk_size)
    #: A blob response is cut off when the client takes longer than this to accept one write
    #: (up to ``BLOB_CHUNK_SIZE`` bytes): a client that stopped reading, or one slower than a
    #: chunk per this many seconds, frees its connection. Applied where the WSGI server
    #: exposes the connection's socket (gunicorn); ``0`` never cuts a client off.
    client_send_timeout_seconds: float = _key(120.0, number(float, 0))
    #: Longest time one database phase of a request may take (its queries, the pool checkout
    #: and a new connection included) before the request answers 503 ``UNAVAILABLE``. Enforced
    #: under gevent (gunicorn's gevent worker, ``examples/gunicorn.conf.py``), where a timer
    #: can interrupt a query waiting on a hung server; ``0`` sets no deadline. Elsewhere the
    #: driver's ``connect_timeout`` and the pool's ``pool_timeout`` are the only bounds.
    database_timeout_seconds: float = _key(5.0, number(float, 0))
    # -- pages, REST API and cache life cycle --
    #: The host template the group pages extend; it must define ``title`` and ``content``
    #: blocks and the block named by ``HEAD_BLOCK``, and show flashed messages.
    base_template: str = _key("base.html", text("a template name, such as 'base.html'"))
    #: The block of ``BASE_TEMPLATE`` inside ``<head>`` that the pages add their style (and
    #: the group page its CSRF ``<meta>`` tag) to, after the block's own content. A base
    #: template without one can name any block outside ``title`` and ``content``.
    head_block: str = _key("head", block_name)
    #: The current request's Content-Security-Policy nonce, for hosts whose policy allows
    #: scripts and styles by nonce: a callable returning it (or ``None``), or the
    #: ``"module:function"`` text naming one. The pages put it on every ``<style>`` and
    #: ``<script>`` they render (they have no inline ``style=`` attribute and no inline
    #: event handler). ``None``: ``flask.g.csp_nonce`` when the host set it, else no
    #: ``nonce`` attribute.
    csp_nonce: t.Callable[[], str | None] | None = _key(None, optional(function))
    #: Where anonymous visitors of the pages go to sign in: an endpoint name
    #: (``"auth.login"``) or a URL (``"/login"``, ``"https://sso.example.com/login"``); they
    #: come back through ``?next=``. ``None``: Flask-Login's ``login_manager.unauthorized()``
    #: when the app has Flask-Login, else a plain 401.
    login_view: str | None = _key(None, optional(text("an endpoint name or a URL")))
    #: Run cleanup periodically in a thread of each web process (single-host setups).
    #: Elsewhere run ``flask dependency-proxy cleanup`` from cron.
    cleanup_scheduler: bool = _key(False, boolean)
    #: Seconds between two scheduled cleanups (shared by every process through the database).
    cleanup_interval_seconds: float = _key(3600, number(float, 1))
    #: Rows deleted per transaction by cleanup.
    cleanup_batch_size: int = _key(500, number(int, 1))
    #: A blob file is deleted only when it was committed, and set aside without any row
    #: claiming it, at least this many seconds ago: a fetch that just committed a file, or
    #: a pull claiming one, gets this long to record its row. ``0`` turns that protection off.
    cleanup_file_grace_seconds: float = _key(600, number(float, 0))
    #: Seconds after a purge during which another purge of the same group answers 409.
    purge_cooldown_seconds: float = _key(3600, number(float, 0))
    #: Seconds each process trusts the blocked images, tag cooldowns and signature
    #: policies it loaded before it reads them again: how long a change made elsewhere
    #: takes to reach every worker.
    block_refresh_seconds: float = _key(5, number(float, 0))
    #: The instance's tag cooldown, for groups without their own: hours (fractions
    #: allowed) a tag's new upstream digest waits, counted from when the group's cache
    #: first saw it, before pulls of the tag get it; they get the previous digest
    #: meanwhile. ``0`` turns it off. See the supply-chain page of the docs.
    tag_cooldown_hours: float = _key(0, number(float, 0))
    #: A brand-new tag (no previous digest) during the cooldown: ``serve`` it at once, or
    #: ``refuse`` it (403 ``DENIED``) until its digest has waited.
    tag_cooldown_new_tags: str = _key("serve", choice("serve", "refuse"))
    #: A pull by digest of a digest still in cooldown: ``allow`` (pinning a digest is a
    #: deliberate act) or ``refuse``.
    tag_cooldown_digest_pulls: str = _key("allow", choice("allow", "refuse"))
    #: Predictive refresh, for groups without their own setting: a background thread
    #: re-checks each group's most pulled tags upstream with ``HEAD`` requests and, when a
    #: tag moved, fetches the new manifest and the blobs of the platforms the group pulls,
    #: so the next CI pull is warm. See "Predictive refresh" in the docs.
    refresh_default_enabled: bool = _key(False, boolean)
    #: Run the refresher in a thread of each web process (one across the fleet at a time,
    #: through a database lease). Elsewhere run ``flask dependency-proxy refresh`` from cron.
    refresh_scheduler: bool = _key(False, boolean)
    #: How many of a group's tags (the most pulled in the last ``REFRESH_WINDOW_DAYS``,
    #: plus what the host names for its CI) are kept warm, for groups without their own.
    refresh_tags: int = _key(10, number(int, 1))
    #: Seconds between two checks of one hot tag, for groups without their own.
    refresh_interval_seconds: float = _key(900, number(float, 1))
    #: Days of pulls that rank a group's tags.
    refresh_window_days: int = _key(7, number(int, 1))
    #: Most upstream requests (``HEAD`` and ``GET`` of manifests) one refresh run makes to
    #: one upstream; the refresh stops asking an upstream sooner when it answers
    #: ``RateLimit-Remaining`` at or below ``REFRESH_MIN_RATE_LIMIT_REMAINING`` or holds
    #: requests back after a ``429``'s ``Retry-After``.
    refresh_budget: int = _key(100, number(int, 1))
    #: The ``RateLimit-Remaining`` an upstream keeps for client pulls: at or below it the
    #: refresher does not ask that upstream.
    refresh_min_rate_limit_remaining: int = _key(0, number(int, 0))
    #: Keep a record of every manifest pull (who, what, which digest, the host's job
    #: context), written in batches; see the supply-chain page of the docs.
    pull_record: bool = _key(True, boolean)
    #: Days the pull record keeps a pull; cleanup deletes older ones.
    pull_record_retention_days: int = _key(90, number(int, 1))
    #: Seconds between two writes of a process's buffered usage counters and pull counts
    #: per tag (what the usage chart and predictive refresh read).
    usage_flush_seconds: float = _key(10, number(float, 0))
    #: Seconds between two writes of a process's buffered pull record.
    pull_record_flush_seconds: float = _key(5, number(float, 0))
    # -- quotas --
    #: Largest blob fetched from upstream, in bytes; larger ones are refused (403 ``DENIED``).
    #: The default, 10 GiB, passes the largest layers of common images (CUDA, ML
    #: frameworks) and stops a single pull from filling a disk. ``0`` sets no limit.
    max_blob_size: int = _key(10 * 1024**3, number(int, 0))
    #: What new content does to a group over its size limit: ``evict`` marks the group's
    #: least recently pulled manifests and blobs for deletion to make room; ``refuse``
    #: answers 403 ``DENIED``. Cached content is served either way.
    quota_policy: str = _key("evict", choice("evict", "refuse"))
    # -- operations --
    #: Serve Prometheus metrics at ``/-/dependency_proxy/metrics`` (needs
    #: ``pip install 'flask-dependency-proxy[metrics]'``). Under several worker processes
    #: set ``PROMETHEUS_MULTIPROC_DIR`` (``examples/gunicorn.conf.py`` does) so every
    #: worker counts.
    metrics_enabled: bool = _key(False, boolean)
    #: A scrape then needs ``Authorization: Bearer <token>``; ``None`` serves anyone who can
    #: reach the route.
    metrics_token: str | None = _key(None, optional(text("a token")))
    #: Label cache outcomes with the group's path (one series per group: only for a
    #: modest number of groups). Group paths name private groups, so this needs
    #: ``METRICS_TOKEN``: ``init_app`` refuses it without one.
    metrics_group_labels: bool = _key(False, boolean)
    #: One log line per registry request on the ``flask_dependency_proxy.requests`` logger
    #: at INFO: ``keyvalue`` (``key=value`` pairs), ``json`` (one object per line) or ``off``.
    request_log: str = _key("keyvalue", choice("keyvalue", "json", "off"))
    #: Longest time ``/-/dependency_proxy/ready`` waits for the database and for the blob
    #: store before it answers 503.
    ready_timeout_seconds: float = _key(2.0, number(float, 0.1))
    # -- image signatures --
    #: A Sigstore ``trusted_root.json`` (e.g. the public-good one, copied from a Sigstore
    #: client's TUF repository): the Fulcio roots and Rekor keys keyless signatures are
    #: checked against. The cache never fetches trust material itself.
    signature_trusted_root: str | None = _key(None, optional(readable_file))
    #: PEM certificate roots for keyless or own-PKI signatures (e.g. ``fulcio_v1.crt.pem``).
    signature_roots: str | None = _key(None, optional(readable_file))
    #: PEM intermediates issued by those roots.
    signature_intermediates: str | None = _key(None, optional(readable_file))
    #: Rekor public keys (PEM files, a list or comma-separated). With a log key, every
    #: signature must carry that log's entry, whose time is the signing time.
    signature_rekor_keys: tuple[str, ...] = _key((), readable_files)
    #: Seconds an unsigned or invalid verdict is kept before a pull looks for signatures
    #: again (a verified one is kept for as long as the group's policy stays the same).
    signature_recheck_seconds: float = _key(300.0, number(float, 0))
    #: The signature policy of groups without one of their own: ``off``, ``warn`` (serve,
    #: and mark what is not signed by a trusted signer) or ``enforce`` (refuse it, 403
    #: ``DENIED``). Owners may set their group's own policy, ``off`` included.
    signature_mode: str = _key("off", choice("off", "warn", "enforce"))
    #: The signers those groups trust: a JSON object as the signature policy API takes
    #: it, ``{"keys": [{"name", "pem", "images"}], "identities": [{"issuer", "subject",
    #: "images"}], "index_rule"}``, where a key's ``pem`` is the PEM text or a file's path.
    signature_signers: dict[str, t.Any] | None = _key(None, optional(signers_document))


def env_key(field: dataclasses.Field[t.Any]) -> str:
    """The ``app.config`` key (and environment variable) of a field of :class:`ProxyConfig`."""
    return f"{ENV_PREFIX}{field.name.upper()}"


def load_config(app: Flask) -> ProxyConfig:
    """Apply defaults to ``app.config`` and validate every ``DEPENDENCY_PROXY_*`` key.

    :raises ConfigError: naming the key and what it accepts.
    """
    fields = dataclasses.fields(ProxyConfig)
    for field in fields:
        app.config.setdefault(env_key(field), field.metadata["default"])
    if app.config[f"{ENV_PREFIX}STORAGE_PATH"] is None:
        app.config[f"{ENV_PREFIX}STORAGE_PATH"] = os.path.join(
            app.instance_path, "dependency_proxy"
        )
    values = {
        field.name: field.metadata["parse"](env_key(field), app.config[env_key(field)])
        for field in fields
    }
    if bool(values["upstream_username"]) != bool(values["upstream_password"]):
        raise ConfigError(
            f"Set both {ENV_PREFIX}UPSTREAM_USERNAME and {ENV_PREFIX}UPSTREAM_PASSWORD, or neither."
        )
    if values["upstreams"] is None:
        values["upstreams"] = (
            shorthand_upstream(
                values["upstream_url"], values["upstream_username"], values["upstream_password"]
            ),
        )
    _check_mirror_hosts(values)
    if values["peer_listener_port"] is not None and values["peer_url"] is None:
        raise ConfigError(
            f"{ENV_PREFIX}PEER_LISTENER_PORT serves the peer route of a fleet: set"
            f" {ENV_PREFIX}PEER_URL to the URL of that listener as the other hosts reach it."
        )
    if values["metrics_enabled"] and values["metrics_group_labels"] and not values["metrics_token"]:
        # Group paths name private groups; the route answers anyone who can reach it.
        raise ConfigError(
            f"{ENV_PREFIX}METRICS_GROUP_LABELS puts group paths in the metrics: set"
            f" {ENV_PREFIX}METRICS_TOKEN too, so only a scrape with the token sees them."
        )
    if values["upstream_down_max_seconds"] < values["upstream_down_seconds"]:
        raise ConfigError(
            f"{ENV_PREFIX}UPSTREAM_DOWN_MAX_SECONDS must be at least"
            f" {ENV_PREFIX}UPSTREAM_DOWN_SECONDS."
        )
    return ProxyConfig(**values)


def _check_mirror_hosts(values: dict[str, t.Any]) -> None:
    """A mirror host needs the Docker Hub entry, and must not be the app's own name (its
    group paths would turn into Docker Hub names)."""
    if not values["mirror_hosts"]:
        return
    key = f"{ENV_PREFIX}MIRROR_HOSTS"
    if not any("docker.io" in entry.hosts for entry in values["upstreams"]):
        raise ConfigError(
            f"{key} serves Docker Hub's names: give the upstream entry of Docker Hub"
            f' "hosts": ["docker.io"] in {ENV_PREFIX}UPSTREAMS.'
        )
    if values["external_url"]:
        own = urlsplit(values["external_url"])
        for name in (own.netloc.lower(), (own.hostname or "").lower()):
            if name in values["mirror_hosts"]:
                raise ConfigError(
                    f"{key}: {name!r} is the host of {ENV_PREFIX}EXTERNAL_URL; a mirror needs"
                    " a host name of its own."
                )
