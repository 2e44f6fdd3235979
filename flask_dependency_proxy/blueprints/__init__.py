"""HTTP surfaces of the extension: registry API, token endpoint, pages, REST API."""

from __future__ import annotations

from flask import has_request_context, request

#: The blueprints whose requests are registry traffic: the registry API under ``/v2/``,
#: the token endpoint ``/jwt/auth`` and the peer route of a fleet.
REGISTRY_BLUEPRINTS = frozenset(
    {"dependency_proxy_registry", "dependency_proxy_token", "dependency_proxy_peer"}
)


def is_registry_request() -> bool:
    """Whether the current request goes to the extension's registry, token or peer routes.

    For the host's ``before_request`` and ``after_request`` hooks, which run after URL
    matching: a hook that writes the host's session, sets its headers or does slow work
    per request can return early for container clients, which never use any of it.
    ``False`` outside a request, and for a URL no route matched.
    """
    return has_request_context() and request.blueprint in REGISTRY_BLUEPRINTS
