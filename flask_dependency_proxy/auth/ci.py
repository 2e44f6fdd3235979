"""Variables that CI jobs use to pull through the dependency proxy."""

from __future__ import annotations

from urllib.parse import urlsplit

#: The path between a group and an image name.
CONTAINERS_PATH = "dependency_proxy/containers"


def server_address(external_url: str) -> str:
    """``host:port`` of a URL, with the scheme's default port spelled out.

    Docker keys its credentials by exactly this string, so the port is always present.
    """
    parts = urlsplit(external_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"not an http(s) URL: {external_url!r}")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    host = parts.hostname.lower()
    if ":" in host:  # an IPv6 literal
        host = f"[{host}]"
    return f"{host}:{port}"


def ci_variables(
    *,
    external_url: str,
    project_group_path: str,
    job_token: str,
    username: str = "gitlab-ci-token",
) -> dict[str, str]:
    """The ``CI_DEPENDENCY_PROXY_*`` variables for a job of a project in ``project_group_path``.

    :param external_url: the URL clients reach the platform at.
    :param project_group_path: full path of the project's group (``org/team``).
    :param job_token: the running job's token, used as the password.
    :param username: the job token username (``DEPENDENCY_PROXY_JOB_TOKEN_USERNAME``).
    """
    server = server_address(external_url)
    group_path = project_group_path.strip("/").lower()
    top_level = group_path.split("/", 1)[0]
    return {
        "CI_DEPENDENCY_PROXY_USER": username,
        "CI_DEPENDENCY_PROXY_PASSWORD": job_token,
        "CI_DEPENDENCY_PROXY_SERVER": server,
        "CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX": f"{server}/{top_level}/{CONTAINERS_PATH}",
        "CI_DEPENDENCY_PROXY_DIRECT_GROUP_IMAGE_PREFIX": f"{server}/{group_path}/{CONTAINERS_PATH}",
    }
