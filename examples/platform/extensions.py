"""The extension objects, created once at import and bound to each app in
:func:`examples.platform.create_app` (the usual Flask factory pattern).
"""

from __future__ import annotations

from .host import PlatformHost
from .models import db

try:
    from flask_dependency_proxy import DependencyProxy
except ImportError:  # pragma: no cover - only while the extension object is being written
    DependencyProxy = None  # type: ignore[assignment,misc]

__all__ = ["db", "proxy"]

#: The Dependency Proxy, asking this platform (through :class:`PlatformHost`)
#: about groups, credentials and rights, and keeping its tables in ``db``.
proxy = DependencyProxy(db=db, host=PlatformHost()) if DependencyProxy is not None else None
