"""A group-scoped pull-through cache for container images, as a Flask extension."""

from ._state import state
from .auth.ci import ci_variables
from .blueprints import is_registry_request
from .config import ConfigError
from .extension import DependencyProxy
from .host import AuthFailure, Group, HostAdapter, Principal, PrincipalKind

__all__ = [
    "AuthFailure",
    "ConfigError",
    "DependencyProxy",
    "Group",
    "HostAdapter",
    "Principal",
    "PrincipalKind",
    "ci_variables",
    "is_registry_request",
    "state",
]
