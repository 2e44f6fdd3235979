"""Where the extension keeps its per-application state: a leaf module.

:mod:`.extension` builds every long-lived object once and keeps them here. Blueprints
and the CLI, where a request or a command starts, find them through :func:`state`
without importing the composition root; every module below them is handed what it
needs, and never calls :func:`state` (the import rule in ``pyproject.toml``).
"""

from __future__ import annotations

import dataclasses
import typing as t

if t.TYPE_CHECKING:
    from flask import Flask

    from .admin.groups import GroupAdmin
    from .admin.lifecycle import CleanupScheduler, Lifecycle
    from .admin.refresh import RefreshScheduler, WarmQueue
    from .admin.supply_chain import SupplyChainAdmin
    from .auth.access import AccessControl
    from .auth.tokens import TokenIssuer
    from .cache.pull_through import PullThroughCache
    from .cache.refresh import TagRefresher
    from .cache.signing import SignatureGate
    from .config import ProxyConfig
    from .host import HostAdapter
    from .metrics import Metrics
    from .models.binding import DatabaseBinding
    from .models.database import DatabaseGuard
    from .models.repository import CacheMetadata
    from .models.upstreams import GroupUpstreamRecords
    from .stores.base import StoreBackend
    from .upstream.routing import UpstreamSet

#: The key under ``app.extensions``.
EXTENSION_KEY = "dependency_proxy"


@dataclasses.dataclass
class ProxyState:
    """Everything the extension keeps for one application."""

    config: ProxyConfig
    host: HostAdapter
    metadata: CacheMetadata
    #: Database phases (bounded, released, failures answered with 503).
    database: DatabaseGuard
    #: The host's session and engine, and the context of work outside requests.
    binding: DatabaseBinding
    access: AccessControl
    issuer: TokenIssuer
    store: StoreBackend
    #: The instance's upstream registries (their clients and what they last answered).
    upstreams: UpstreamSet
    #: Each group's order of those upstreams and its own credentials for them.
    group_upstreams: GroupUpstreamRecords
    cache: PullThroughCache
    #: Purge, image deletion and cleanup.
    lifecycle: Lifecycle
    #: Where every component reports what it counts (a no-op without metrics).
    metrics: Metrics
    #: The group use cases the pages, the REST API and the CLI share.
    group_admin: GroupAdmin
    #: Blocked images, the pull record, deleted tags (pages, REST API and CLI).
    supply_chain: SupplyChainAdmin
    #: Runs cleanup from the web processes (``DEPENDENCY_PROXY_CLEANUP_SCHEDULER``).
    scheduler: CleanupScheduler | None = None
    #: Each group's signature policy, checked on manifest pulls.
    signatures: SignatureGate | None = None
    #: Keeps the groups' hot tags warm (predictive refresh).
    refresher: TagRefresher | None = None
    #: Runs the refresher from the web processes (``DEPENDENCY_PROXY_REFRESH_SCHEDULER``).
    refresh_scheduler: RefreshScheduler | None = None
    #: Warm-ups the REST API queued (``POST .../warm``).
    warm_queue: WarmQueue | None = None


def state(app: Flask | None) -> ProxyState:
    """The extension's state for ``app`` (the current app when ``None``)."""
    if app is None:
        from flask import current_app

        app = current_app
    try:
        return t.cast(ProxyState, app.extensions[EXTENSION_KEY])
    except KeyError:
        raise RuntimeError(
            "DependencyProxy is not registered on this app: call DependencyProxy.init_app(app)."
        ) from None
