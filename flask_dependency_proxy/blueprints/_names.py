"""Which group and image a registry request names, and how its token scope names it.

Three ways a client names an image:

- the proxy path, ``/v2/<group>/dependency_proxy/containers/<image>/...``;
- on a host name of ``DEPENDENCY_PROXY_MIRROR_HOSTS``, Docker Hub's names
  (``/v2/library/alpine/...``, what Docker's ``registry-mirrors`` sends), for the group
  that name serves;
- either of them with ``?ns=<registry host>``, which containerd adds to every mirror
  request: the image is that registry's, as if its name started with the host
  (``ghcr.io/org/app``). A mirror host without ``ns`` serves ``docker.io``.

The registry's host goes into the image the cache sees (:meth:`~..upstream.routing.
UpstreamSet.qualified`), so the route, the records and the tag lists are those of a name
written with its host; scopes, tag lists and their links keep the name as the client
sent it. A ``ns`` that is not a ``host[:port]`` is refused before anything else looks at
it; one that no upstream serves is ``NAME_UNKNOWN``.
"""

from __future__ import annotations

import dataclasses
import re

from flask import request

from .._state import state
from ..oci.errors import ErrorCode, RegistryError
from ..oci.reference import (
    ProxyPath,
    is_registry_host,
    is_valid_image_name,
    parse_proxy_path,
)
from ..upstream.routing import UnknownRegistry

#: The registry a mirror host's names belong to when the request has no ``ns``.
MIRROR_REGISTRY = "docker.io"
_PORT = re.compile(r":[0-9]+\Z")


@dataclasses.dataclass(frozen=True)
class RequestedImage:
    """An image a registry request names.

    :param path: the group and the image the cache serves (with its registry's host in
        front when the request gave the registry).
    :param repository: the repository as the client names it (its scope, its tag list).
    :param ns: the request's validated ``ns``, for links that must keep it.
    """

    path: ProxyPath
    repository: str
    ns: str | None


def mirror_group() -> str | None:
    """The group the request's host name serves as a Docker Hub mirror, if it is one."""
    hosts = state(None).config.mirror_hosts
    if not hosts:
        return None
    host = request.host.lower()
    return hosts.get(host) or hosts.get(_PORT.sub("", host))


def mirror_base_url() -> str | None:
    """``scheme://host`` of a mirror host's request (where its token realm is), or ``None``
    elsewhere. The scheme is ``EXTERNAL_URL``'s when set: TLS ends in front of the app
    for both names alike."""
    if mirror_group() is None:
        return None
    configured = state(None).config.external_url
    scheme = configured.partition("://")[0] if configured else request.scheme
    return f"{scheme}://{request.host}"


def requested_image(name: str) -> RequestedImage:
    """The image of the request's path name, its host name and its ``ns``.

    :raises RegistryError: ``NAME_INVALID`` (400) for a malformed name or ``ns``,
        ``NAME_UNKNOWN`` (404) for a name that is no proxy path, or a ``ns`` that no
        upstream serves.
    """
    ns = _namespace()
    group = mirror_group()
    if group is None:
        path = parse_proxy_path(name)
        repository = path.repository
    else:
        if not is_valid_image_name(name):
            raise RegistryError(ErrorCode.NAME_INVALID, "invalid image name", {"name": name[:300]})
        path = ProxyPath(group_path=group, image=name)
        repository = name
    registry = ns or (MIRROR_REGISTRY if group is not None else None)
    if registry is not None:
        try:
            image = state(None).upstreams.qualified(registry, path.image)
        except UnknownRegistry as exc:
            raise RegistryError(
                ErrorCode.NAME_UNKNOWN, str(exc), {"name": path.image, "ns": registry}
            ) from None
        if not is_valid_image_name(image):
            raise RegistryError(ErrorCode.NAME_INVALID, "image name is too long", {"name": image})
        path = ProxyPath(group_path=path.group_path, image=image)
    return RequestedImage(path=path, repository=repository, ns=ns)


def scope_group(name: str) -> str:
    """The group path a token scope's repository ``name`` is in, on this request's host.

    :raises RegistryError: the name is not one of this host's repository names.
    """
    group = mirror_group()
    if group is None:
        return parse_proxy_path(name).group_path
    if not is_valid_image_name(name):
        raise RegistryError(ErrorCode.NAME_INVALID, "invalid image name")
    return group


def pull_scope(name: str | None) -> str | None:
    """The challenge's ``repository:<name>:pull`` for a path name, as the client wrote it
    (the group path folded to lower case); ``None`` for a name that is none of this host's,
    so a malformed name is never echoed back."""
    if name is None:
        return None
    if mirror_group() is not None:
        return f"repository:{name}:pull" if is_valid_image_name(name) else None
    try:
        return f"repository:{parse_proxy_path(name).repository}:pull"
    except RegistryError:
        return None


def _namespace() -> str | None:
    """The request's ``ns``, lower case: one ``host[:port]``, or none."""
    values = request.args.getlist("ns")
    if not values:
        return None
    ns = values[0].lower()
    if len(values) > 1 or not is_registry_host(ns):
        raise RegistryError(
            ErrorCode.NAME_INVALID,
            "ns must name one registry as host[:port], such as docker.io or ghcr.io",
            {"ns": values[0][:200]},
        )
    return ns
