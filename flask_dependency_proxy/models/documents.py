"""What a manifest document references, read from its JSON: the blobs of an image
manifest, the platform manifests of an index, and an image's size.

A document that is not JSON, or not of the expected shape, references nothing and has
no size: these readers never raise, since rows hold whatever upstreams answered.
"""

from __future__ import annotations

import json
import typing as t


def _document(content: bytes) -> dict[str, t.Any] | None:
    try:
        document = json.loads(content)
    except ValueError:
        return None
    return document if isinstance(document, dict) else None


def _descriptor_size(descriptor: t.Any) -> int:
    if isinstance(descriptor, dict):
        size = descriptor.get("size")
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            return size
    return 0


def image_size(content: bytes) -> int | None:
    """Config plus layers of an image manifest; ``None`` for an index or a bad document."""
    document = _document(content)
    if document is None or not isinstance(document.get("layers"), list):
        return None
    return _descriptor_size(document.get("config")) + sum(
        _descriptor_size(layer) for layer in document["layers"]
    )


def blob_digests(content: bytes) -> set[str]:
    """Config and layer digests an image manifest references (none for anything else)."""
    document = _document(content)
    if document is None or not isinstance(document.get("layers"), list):
        return set()
    found = set()
    for descriptor in [document.get("config"), *document["layers"]]:
        if isinstance(descriptor, dict) and isinstance(descriptor.get("digest"), str):
            found.add(descriptor["digest"])
    return found


def index_children(content: bytes) -> list[str] | None:
    """Digests an index or manifest list points at; ``None`` for anything else."""
    document = _document(content)
    if document is None or not isinstance(document.get("manifests"), list):
        return None
    return [
        entry["digest"]
        for entry in document["manifests"]
        if isinstance(entry, dict) and isinstance(entry.get("digest"), str)
    ]
