"""Which blob store an application uses: the one place that knows every backend."""

from __future__ import annotations

from ..config import ConfigError, ProxyConfig
from .base import StoreBackend
from .filesystem import FilesystemStore


def open_store(config: ProxyConfig) -> StoreBackend:
    """The filesystem store at ``STORAGE_PATH``, or the object store ``STORAGE_URL`` names.

    :raises ConfigError: object storage is configured but its extra is not installed.
    """
    if config.storage_url is None:
        return FilesystemStore(config.storage_path)
    try:
        from .s3 import S3Store
    except ImportError as exc:
        if exc.name not in {"boto3", "botocore"}:
            raise
        raise ConfigError(
            "DEPENDENCY_PROXY_STORAGE_URL names object storage, which needs boto3:"
            " pip install 'flask-dependency-proxy[s3]'"
        ) from exc
    return S3Store.from_config(config)
