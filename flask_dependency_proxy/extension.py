"""The ``DependencyProxy`` extension object: configuration and wiring, nothing else."""

from __future__ import annotations

import logging
import os
import re
import typing as t
from urllib.parse import urlsplit

from ._state import EXTENSION_KEY, ProxyState, state
from .admin.groups import GroupAdmin
from .admin.lifecycle import CleanupScheduler, Lifecycle
from .admin.periodic import PeriodicJob
from .admin.refresh import RefreshScheduler, WarmQueue
from .admin.supply_chain import SupplyChainAdmin
from .auth.access import AccessControl
from .auth.group_paths import GroupPaths
from .auth.throttle import LoginThrottle
from .auth.tokens import TokenIssuer
from .blueprints._csrf import exempt_from_host_csrf
from .blueprints._requestlog import note_upstream_status
from .cache.blocks import BlockList
from .cache.cooldown import CooldownPolicy, Cooldowns
from .cache.manifests import DeletedTags
from .cache.pull_through import PullThroughCache
from .cache.quota import QuotaPolicy, Quotas
from .cache.refresh import RefreshDefaults, TagRefresher
from .cache.signing import PolicyError, SignatureGate, load_trust_root, normalize_policy
from .config import ENV_PREFIX, ConfigError, ProxyConfig, load_config
from .fetch.fetcher import BlobFetcher
from .fetch.fleet import FleetSource
from .fetch.fleet_tokens import FleetTokens
from .fetch.leases import FetchLeases
from .fetch.peer_tokens import PeerTokens
from .host import CiImageSource, HostAdapter
from .metrics import Metrics, metrics_for
from .models.binding import (
    DatabaseBinding,
    EngineSource,
    OutsideRequest,
    SessionSource,
    check_arguments,
)
from .models.blocks import BlockRecords
from .models.cooldowns import TagHoldRecords
from .models.group_paths import GroupPathRecords
from .models.group_settings import GroupSettingsRecords, Settings
from .models.hot_tags import HotTagRecords
from .models.quota import QuotaRecords
from .models.repository import CacheMetadata
from .models.signatures import SignatureRecords
from .models.upstreams import GroupUpstreamRecords
from .signatures.certificates import CHAIN_VERIFICATION_NEEDS, chain_verification_available
from .stores.backends import open_store
from .upstream.breaker import CircuitBreaker
from .upstream.client import UpstreamClient
from .upstream.credentials import CredentialCipher
from .upstream.routing import UpstreamEntry, UpstreamSet
from .upstream.token_cache import SharedTokenFiles, TokenShare
from .upstream.transport import requests_session

if t.TYPE_CHECKING:
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

__all__ = ["DependencyProxy", "ProxyState", "state"]

log = logging.getLogger("flask_dependency_proxy")


class DependencyProxy:
    """A group-scoped pull-through cache for container images.

    The extension's tables live in the host's database, reached through the host's own
    session and engine (see :mod:`~flask_dependency_proxy.models.binding`): pass either

    - ``db=``: the host's Flask-SQLAlchemy object, or
    - ``session=``: plain SQLAlchemy, a ``scoped_session`` or a zero-argument callable
      returning the current request's (or app context's) ``Session``; with ``engine=``
      (an ``Engine`` or a zero-argument callable returning one) unless the session's bind
      is the engine.

    :param app: register on this application at once (or call :meth:`init_app` later).
    :param host: the host adapter (see :class:`~flask_dependency_proxy.host.HostAdapter`).
    :param outside_request: a zero-argument callable returning a context manager, entered
        (inside an app context the extension pushes) around everything the extension runs
        outside a request: every ``flask dependency-proxy`` command, each run of the
        cleanup scheduler, a blob recorded from a fetch thread. A host whose session
        exists only within its requests opens (and closes) one there.
    :raises TypeError: for neither ``db=`` nor ``session=``, or both.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        db: SQLAlchemy | None = None,
        engine: EngineSource | None = None,
        session: SessionSource | None = None,
        host: HostAdapter | None = None,
        outside_request: OutsideRequest | None = None,
    ) -> None:
        check_arguments(db=db, engine=engine, session=session)
        self.db = db
        self.engine = engine
        self.session = session
        self.host = host
        self.outside_request = outside_request
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask, *, host: HostAdapter | None = None) -> None:
        """Validate configuration, build the per-app state, register routes and CLI.

        :raises RuntimeError: when registered twice on the same app, without a host, or
            with a Flask-SQLAlchemy object not registered on ``app``.
        :raises ConfigError: for a bad ``DEPENDENCY_PROXY_*`` value.
        """
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError(
                "A 'DependencyProxy' instance has already been registered on this Flask app."
                " Import and use that instance instead."
            )
        adapter = host or self.host
        if adapter is None:
            raise RuntimeError(
                "DependencyProxy needs a host adapter: pass host=... to DependencyProxy()"
                " or init_app(). See flask_dependency_proxy.host.HostAdapter."
            )
        if not isinstance(adapter, HostAdapter):
            raise TypeError(f"{adapter!r} does not implement HostAdapter.")
        _check_api_scope_name(adapter)
        binding = DatabaseBinding.from_arguments(
            app,
            db=self.db,
            engine=self.engine,
            session=self.session,
            outside_request=self.outside_request,
        )
        _warn_about_unread_environment(app)
        config = load_config(app)
        secret = app.config.get("SECRET_KEY")
        if not secret:
            hint = ""
            if os.environ.get("SECRET_KEY"):
                hint = (
                    " SECRET_KEY is in the environment but not in app.config:"
                    " app.config.from_prefixed_env() reads FLASK_SECRET_KEY."
                )
            raise RuntimeError(
                f"DependencyProxy signs registry tokens with SECRET_KEY: set it.{hint}"
            )
        fallbacks = list(app.config.get("SECRET_KEY_FALLBACKS") or [])

        metadata = CacheMetadata(
            binding,
            read_granularity_seconds=config.read_time_granularity_seconds,
            timeout_seconds=config.database_timeout_seconds,
        )
        issuer = TokenIssuer([secret, *fallbacks], ttl_seconds=config.token_ttl)
        store = open_store(config)
        metrics = metrics_for(config.metrics_enabled, group_labels=config.metrics_group_labels)
        upstreams = _upstream_set(config, _shared_tokens(binding, config), metrics)
        fetcher = BlobFetcher(
            store,
            start_timeout=config.upstream_read_timeout_seconds,
            resume_attempts=config.upstream_retries,
            max_blob_size=config.max_blob_size,
            fleet=_fleet(binding, config, [secret, *fallbacks]),
            metrics=metrics,
        )
        group_upstreams = GroupUpstreamRecords(
            lambda: metadata.session,
            CredentialCipher.from_secrets([secret, *fallbacks], config.credential_keys),
        )
        settings = GroupSettingsRecords(
            lambda: metadata.session, default_enabled=config.group_default_enabled
        )
        block_records = BlockRecords(lambda: metadata.session)
        blocks = BlockList(
            block_records.active_rules,
            metadata.database,
            refresh_seconds=config.block_refresh_seconds,
        )
        cache = PullThroughCache(
            store=store,
            upstreams=upstreams,
            group_upstreams=group_upstreams,
            metadata=metadata,
            fetcher=fetcher,
            quotas=Quotas(
                QuotaRecords(lambda: metadata.session),
                policy=QuotaPolicy(config.quota_policy),
                max_blob_size=config.max_blob_size,
                flush_reads=lambda: metadata.flush_reads(force=True),
            ),
            tag_check_interval=config.tag_check_interval,
            serve_stale_on_not_found=config.serve_stale_on_upstream_not_found,
            blocks=blocks,
            deleted_tags=_deleted_tags(config, settings, block_records, metadata),
            cooldowns=Cooldowns(
                settings.cooldown_rows,
                TagHoldRecords(lambda: metadata.session),
                metadata.database,
                default=CooldownPolicy(
                    seconds=config.tag_cooldown_hours * 3600,
                    new_tags=config.tag_cooldown_new_tags,
                    digest_pulls=config.tag_cooldown_digest_pulls,
                ),
                refresh_seconds=config.block_refresh_seconds,
            ),
            metrics=metrics,
            audit_flush_seconds=config.pull_record_flush_seconds,
            usage_flush_seconds=config.usage_flush_seconds,
        )
        throttle = LoginThrottle(
            lambda: binding.session,
            max_failures=config.login_max_failures,
            max_failures_per_address=config.login_max_failures_per_address,
            window_seconds=config.login_failure_window_seconds,
        )
        paths = GroupPaths(GroupPathRecords(lambda: metadata.session), adapter)
        access = AccessControl(
            adapter,
            issuer,
            metadata,
            throttle,
            recheck_seconds=config.principal_recheck_seconds,
            group_default_enabled=config.group_default_enabled,
            database=metadata.database,
            paths=paths,
        )
        lifecycle = Lifecycle.from_config(config, lambda: metadata.session, store, metrics=metrics)
        group_admin = GroupAdmin(
            lambda: metadata.session,
            settings=settings,
            group_upstreams=group_upstreams,
            upstreams=upstreams,
            lifecycle=lifecycle,
            cache=cache,
            store=store,
            access=access,
            quota_policy=config.quota_policy,
            paths=paths,
            find_group=adapter.find_group_by_id,
        )
        supply_chain = SupplyChainAdmin(
            lambda: metadata.session,
            settings=settings,
            blocks=blocks,
            cooldowns=cache.cooldowns,
            serve_deleted_tags_default=config.serve_stale_on_upstream_not_found,
        )
        scheduler = None
        if config.cleanup_scheduler:
            scheduler = CleanupScheduler(
                app,
                lifecycle,
                config.cleanup_interval_seconds,
                release=metadata.release,
                context=binding.outside_request,
            )
        signatures = _signature_gate(config, metadata, metrics)
        refresher = _refresher(config, cache, settings, adapter, lifecycle)
        refresh_scheduler = None
        if config.refresh_scheduler:
            refresh_scheduler = RefreshScheduler(
                app,
                refresher,
                config.refresh_interval_seconds,
                release=metadata.release,
                context=binding.outside_request,
            )
        app.extensions[EXTENSION_KEY] = ProxyState(
            config=config,
            host=adapter,
            metadata=metadata,
            database=metadata.database,
            binding=binding,
            access=access,
            issuer=issuer,
            store=store,
            upstreams=upstreams,
            group_upstreams=group_upstreams,
            cache=cache,
            lifecycle=lifecycle,
            metrics=metrics,
            group_admin=group_admin,
            supply_chain=supply_chain,
            scheduler=scheduler,
            signatures=signatures,
            refresher=refresher,
            refresh_scheduler=refresh_scheduler,
            warm_queue=WarmQueue(
                app,
                lambda group_id, path, targets: group_admin.warm(
                    group_id, path, targets, _SilentProgress()
                ),
                release=metadata.release,
                context=binding.outside_request,
            ),
        )

        from .blueprints import registry, token
        from .blueprints._registry_http import refuse_untrusted_host
        from .cli import cli

        if config.enabled:
            app.register_blueprint(registry.bp)
            app.register_blueprint(token.bp)
            if config.peer_url is not None:
                from .blueprints import peer

                app.register_blueprint(peer.bp)
            app.before_request(refuse_untrusted_host)
        if config.trusted_proxies:
            _trust_forwarded_headers(app, config.trusted_proxies)
        # -- pages, REST API and cache life cycle --
        from .blueprints import api, pages

        app.register_blueprint(pages.bp)
        app.register_blueprint(api.bp)
        from .blueprints import operations

        app.register_blueprint(operations.bp)
        exempt_from_host_csrf(
            app, [bp for name, bp in app.blueprints.items() if name.startswith("dependency_proxy_")]
        )
        if scheduler is not None:
            scheduler.install()
        if refresh_scheduler is not None:
            refresh_scheduler.install()
        PeriodicJob(
            app,
            cache.flush_bookkeeping,
            max(min(config.pull_record_flush_seconds, config.usage_flush_seconds), 1.0),
            name="dependency-proxy-bookkeeping",
            release=metadata.release,
            context=binding.outside_request,
        ).install()
        # --
        app.cli.add_command(cli)
        log.info(
            "dependency proxy on %s: upstreams %s; blobs in %s",
            app.name,
            ", ".join(f"{entry.name} ({entry.url})" for entry in config.upstreams),
            store.describe(),
        )

    def forget_group(self, group_id: int) -> None:
        """Forget a group the host deleted: what a host calls when it deletes a group.

        Every row the extension keeps for it is deleted: cache, proxy settings, size
        limit, upstream credentials, usage, recorded path, blocks, pull record, signature
        policy, tags in cooldown (blob files no other group uses go with the next
        cleanup), so a group that later gets the same id starts afresh. Call it inside
        an application context; harmless for an id the extension never saw.
        """
        state(None).group_admin.forget_group(group_id)

    def confirm_group(self, group_id: int) -> None:
        """Record that the group with this id is the one the extension knew, renamed.

        A group whose id now names another path than the one recorded is refused
        until the host calls this (a rename) or :meth:`forget_group` (the id was given
        to a new group). Call it inside an application context. It raises
        ``GroupPathTaken`` (``flask_dependency_proxy.auth.group_paths``) when another
        group holds the group's path, compared lowercased.

        :raises LookupError: the host has no group with this id.
        """
        state(None).group_admin.confirm_group(group_id)

    def create_all(self) -> None:
        """Create or upgrade the extension's tables in the host's database to the newest
        migration (inside an app context); harmless to repeat."""
        from flask import current_app

        from .migrations import upgrade

        upgrade(engine=state(current_app).binding.engine)


#: A scope name as ``WWW-Authenticate`` quotes it (RFC 6750's ``scope-token``).
_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]{1,100}")


class _SilentProgress:
    """A warm-up's progress nobody watches (one the REST API queued)."""

    def planned(self, plan: t.Any) -> None:
        pass

    def advance(self, plan: t.Any, nbytes: int) -> None:
        pass

    def finished(self, outcome: t.Any) -> None:
        if outcome.error:
            log.warning("warm-up of %s failed: %s", outcome.target.label, outcome.error)


def _refresher(
    config: ProxyConfig,
    cache: PullThroughCache,
    settings: GroupSettingsRecords,
    adapter: HostAdapter,
    lifecycle: Lifecycle,
) -> TagRefresher:
    """The predictive refresher, with the host's CI image references when it names them."""
    ci_images = None
    if isinstance(adapter, CiImageSource):
        source = adapter

        def ci_images(group_id: int) -> list[str]:
            group = adapter.find_group_by_id(group_id)
            return [] if group is None else list(source.ci_image_references(group))

    def group_settings(group_id: int) -> Settings | None:
        return settings.get(group_id)

    return TagRefresher(
        cache,
        HotTagRecords(lambda: cache.metadata.session),
        group_settings=group_settings,
        refresh_groups=lambda: [
            row.group_id for row in settings.refresh_rows() if row.refresh_enabled
        ],
        leases=lifecycle.records,
        defaults=RefreshDefaults(
            enabled=config.refresh_default_enabled,
            tags=config.refresh_tags,
            interval_seconds=config.refresh_interval_seconds,
            window_days=config.refresh_window_days,
            budget=config.refresh_budget,
            min_rate_limit_remaining=config.refresh_min_rate_limit_remaining,
        ),
        ci_images=ci_images,
        metrics=cache.metrics,
    )


def _check_api_scope_name(adapter: HostAdapter) -> None:
    """The adapter's optional ``api_scope_name`` must be a scope name."""
    name = getattr(adapter, "api_scope_name", "api")
    if not isinstance(name, str) or not _SCOPE_TOKEN.fullmatch(name):
        raise TypeError(
            f"{type(adapter).__name__}.api_scope_name is {name!r}: name the scope the host's"
            " API tokens need, in printable ASCII without spaces, quotes or backslashes."
        )


def _warn_about_unread_environment(app: Flask) -> None:
    """Warn about ``DEPENDENCY_PROXY_*`` environment variables that ``app.config`` does
    not have: the classic mistake is ``from_prefixed_env()``, which reads only
    ``FLASK_``-prefixed names, so the setting silently keeps its default."""
    unread = sorted(
        name for name in os.environ if name.startswith(ENV_PREFIX) and name not in app.config
    )
    if unread:
        log.warning(
            "environment variables %s are set but app.config does not have them, so"
            " their defaults apply. app.config.from_prefixed_env() reads FLASK_* names"
            " only; copy DEPENDENCY_PROXY_* variables into app.config before init_app"
            " (see the README).",
            ", ".join(unread),
        )


def _deleted_tags(
    config: ProxyConfig,
    settings: GroupSettingsRecords,
    records: BlockRecords,
    metadata: CacheMetadata,
) -> DeletedTags:
    """Each group's policy for a cached tag upstream deleted, and the record of it."""
    from .models.blocks import EVENT_UPSTREAM_NOT_FOUND
    from .models.tables import utcnow

    default = config.serve_stale_on_upstream_not_found

    def serve(group_id: int) -> bool:
        own = settings.get(group_id).upstream_not_found
        return default if own is None else own == "serve"

    def record(group_id: int, image: str, tag: str, digest: str, served: bool) -> None:
        what = "still served from the cache" if served else "no longer served"
        records.record_event(
            group_id,
            EVENT_UPSTREAM_NOT_FOUND,
            image,
            tag,
            f"upstream answered 404 for {image}:{tag} (cached as {digest}): {what}",
            utcnow(),
        )

    return DeletedTags(serve, record, metadata.database)


def _signature_gate(
    config: ProxyConfig, metadata: CacheMetadata, metrics: Metrics
) -> SignatureGate:
    """The groups' signature policies, with the trust roots the admin configured.

    :raises ConfigError: a trust file is not what its key says.
    """
    try:
        roots = load_trust_root(
            trusted_root=config.signature_trusted_root,
            roots=config.signature_roots,
            intermediates=config.signature_intermediates,
            rekor_keys=config.signature_rekor_keys,
        )
    except (ValueError, OSError) as error:
        raise ConfigError(f"{ENV_PREFIX}SIGNATURE_* trust material: {error}") from error
    if roots is not None and roots.authorities and not chain_verification_available():
        raise ConfigError(
            f"{ENV_PREFIX}SIGNATURE_TRUSTED_ROOT / SIGNATURE_ROOTS: {CHAIN_VERIFICATION_NEEDS}"
        )
    try:
        default = normalize_policy(
            {"mode": config.signature_mode, **(config.signature_signers or {})}, roots=roots
        )
    except PolicyError as error:
        raise ConfigError(
            f"{ENV_PREFIX}SIGNATURE_MODE and {ENV_PREFIX}SIGNATURE_SIGNERS: {error}."
        ) from None
    return SignatureGate(
        records=SignatureRecords(lambda: metadata.session),
        database=metadata.database,
        roots=roots,
        recheck_seconds=config.signature_recheck_seconds,
        metrics=metrics,
        refresh_seconds=config.block_refresh_seconds,
        default=default,
    )


def _upstream_set(config: ProxyConfig, shared_tokens: TokenShare, metrics: Metrics) -> UpstreamSet:
    """A client per upstream entry and credential, all on one connection pool; the
    clients of an entry share its circuit breaker."""
    session = requests_session()

    def client(
        entry: UpstreamEntry, credentials: tuple[str, str] | None, breaker: CircuitBreaker
    ) -> UpstreamClient:
        return UpstreamClient(
            entry.url,
            session=session,
            credentials=credentials,
            connect_timeout=config.upstream_connect_timeout_seconds,
            read_timeout=config.upstream_read_timeout_seconds,
            retries=config.upstream_retries,
            shared_tokens=shared_tokens,
            breaker=breaker,
            allow_private_redirects=entry.allow_private_redirects,
            auth_hosts=entry.auth_hosts,
            name=entry.name,
            metrics=metrics,
            on_answer=note_upstream_status,
        )

    def breaker() -> CircuitBreaker:
        return CircuitBreaker(
            config.upstream_down_after_failures,
            config.upstream_down_seconds,
            max_seconds=config.upstream_down_max_seconds,
        )

    return UpstreamSet(config.upstreams, client, breaker)


def _shared_tokens(binding: DatabaseBinding, config: ProxyConfig) -> TokenShare:
    """Upstream tokens shared by this host's workers, and by the fleet's hosts when
    ``PEER_URL`` is set."""
    files = SharedTokenFiles(os.path.join(config.storage_path, "upstream-tokens"))
    return files if config.peer_url is None else FleetTokens(files, lambda: binding.engine)


def _fleet(
    binding: DatabaseBinding, config: ProxyConfig, secret_keys: list[str]
) -> FleetSource | None:
    """Fetch coordination across the hosts that share the database, when ``PEER_URL``
    names this host; ``None`` keeps fetches to this host's own processes."""
    if config.peer_url is None:
        return None
    listener = config.peer_listener_port
    if listener is not None and _port_of(config.peer_url) != listener:
        log.warning(
            "DEPENDENCY_PROXY_PEER_URL %s is not on DEPENDENCY_PROXY_PEER_LISTENER_PORT %s,"
            " the only listener that serves the peer route: unless a port mapping sits"
            " between the hosts, the other hosts cannot read this host's fetches.",
            config.peer_url,
            listener,
        )
    return FleetSource(
        FetchLeases(
            lambda: binding.engine, config.peer_url, ttl_seconds=config.fetch_lease_seconds
        ),
        PeerTokens(secret_keys, config.peer_url),
        read_timeout=config.upstream_read_timeout_seconds,
    )


def _port_of(url: str) -> int:
    parts = urlsplit(url)
    return parts.port or (443 if parts.scheme == "https" else 80)


def _trust_forwarded_headers(app: Flask, proxies: int) -> None:
    """Wrap the whole host app, so its own pages see the client's address and scheme too."""
    from werkzeug.middleware.proxy_fix import ProxyFix

    app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
        app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=proxies
    )
