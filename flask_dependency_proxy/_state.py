"""Where the extension keeps its per-application state: a leaf module.

Blueprints, the CLI and cleanup find the wiring through :func:`state` without importing
the composition root (:mod:`.extension`).
"""

from __future__ import annotations

import dataclasses
import typing as t

if t.TYPE_CHECKING:
    from flask import Flask

    from .auth.access import AccessControl
    from .auth.tokens import TokenIssuer
    from .cache.pull_through import PullThroughCache
    from .config import ProxyConfig
    from .host import HostAdapter
    from .metrics import Metrics
    from .models.database import DatabaseGuard
    from .models.repository import CacheMetadata
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
    access: AccessControl
    issuer: TokenIssuer
    store: StoreBackend
    #: The instance's upstream registries (their clients and what they last answered).
    upstreams: UpstreamSet
    cache: PullThroughCache
    #: Where every component reports what it counts (a no-op without metrics).
    metrics: Metrics


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
