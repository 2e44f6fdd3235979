"""The Dependency Proxy extension object, created once at import and bound to each
app in :func:`examples.platform.create_app` (the usual Flask factory pattern).
"""

from __future__ import annotations

from flask_dependency_proxy import DependencyProxy

from .host import PlatformHost
from .models import db

__all__ = ["db", "proxy"]

#: Asks this platform (through :class:`PlatformHost`) about groups, credentials and
#: rights, and keeps its own tables in the platform's database through ``db``.
proxy = DependencyProxy(db=db, host=PlatformHost())
