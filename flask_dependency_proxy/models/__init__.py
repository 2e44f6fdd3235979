"""Tables and queries of the extension, used through the host's database session."""

from .repository import BlobRecord, CacheMetadata, ManifestRecord
from .tables import Base, CachedBlob, CachedManifest, GroupSettings, Status, metadata

__all__ = [
    "Base",
    "BlobRecord",
    "CacheMetadata",
    "CachedBlob",
    "CachedManifest",
    "GroupSettings",
    "ManifestRecord",
    "Status",
    "metadata",
]
