"""Builders for the tests of the group pages, the REST API and the cache life cycle.

Plain functions (no fixtures); each runs inside an application context of an app
built by ``conftest.app_factory``, and writes rows through the extension's tables the
way the pull-through cache does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import typing as t

import sqlalchemy as sa

from flask_dependency_proxy import state
from flask_dependency_proxy.models.tables import CachedBlob, CachedManifest, Status, utcnow

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


class Clock:
    """Naive UTC now, moved by the test."""

    def __init__(self, now: dt.datetime | None = None) -> None:
        self.now = now or utcnow()

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def image_manifest(config_size: int, layer_sizes: t.Sequence[int], seed: str = "") -> bytes:
    """An OCI image manifest whose descriptors have these sizes (digests are made up)."""

    def descriptor(media_type: str, size: int, n: int) -> dict[str, t.Any]:
        return {"mediaType": media_type, "size": size, "digest": sha256(f"{seed}/{n}".encode())}

    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": descriptor("application/vnd.oci.image.config.v1+json", config_size, 0),
            "layers": [
                descriptor("application/vnd.oci.image.layer.v1.tar+gzip", size, n + 1)
                for n, size in enumerate(layer_sizes)
            ],
        }
    ).encode()


def image_index(children: t.Sequence[bytes]) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "size": len(child), "digest": sha256(child)}
                for child in children
            ],
        }
    ).encode()


def add_manifest(
    group_id: int,
    image: str,
    tag: str | None,
    *,
    content: bytes | None = None,
    media_type: str = OCI_MANIFEST,
    last_read_at: dt.datetime | None = None,
    created_at: dt.datetime | None = None,
    status: Status = Status.DEFAULT,
) -> CachedManifest:
    """A manifest row, as the cache saves one."""
    session = state(None).metadata.session
    content = content if content is not None else image_manifest(100, [1000], f"{image}:{tag}")
    now = utcnow()
    row = CachedManifest(
        group_id=group_id,
        image=image,
        tag=tag,
        digest=sha256(content),
        media_type=media_type,
        size=len(content),
        content=content,
        status=status,
        created_at=created_at or now,
        updated_at=created_at or now,
        checked_at=now,
        last_read_at=last_read_at or now,
    )
    session.add(row)
    session.commit()
    return row


def add_blob(
    group_id: int,
    data: bytes,
    *,
    last_read_at: dt.datetime | None = None,
    status: Status = Status.DEFAULT,
    write_file: bool = True,
) -> str:
    """A blob row for ``data`` (and its file in the store, committed as a fetch does)."""
    proxy = state(None)
    digest = sha256(data)
    if write_file and proxy.store.size(digest) is None:
        staged = proxy.store.stage(digest, len(data))
        staged.write(data)
        staged.commit()
    now = utcnow()
    proxy.metadata.session.add(
        CachedBlob(
            group_id=group_id,
            digest=digest,
            size=len(data),
            status=status,
            created_at=now,
            last_read_at=last_read_at or now,
        )
    )
    proxy.metadata.session.commit()
    return digest


def bulk_rows(group_id: int, count: int) -> None:
    """``count`` manifests and ``count`` blobs for one group in two ``executemany`` inserts
    (rows only, no files)."""
    session = state(None).metadata.session
    now = utcnow()
    content = image_manifest(100, [1000])
    session.execute(
        sa.insert(CachedManifest),
        [
            {
                "group_id": group_id,
                "image": f"bulk/image-{n // 10}",
                "tag": f"v{n}",
                "digest": sha256(b"%d" % n),
                "media_type": OCI_MANIFEST,
                "size": len(content),
                "content": content,
                "status": Status.DEFAULT,
                "created_at": now,
                "updated_at": now,
                "checked_at": now,
                "last_read_at": now,
            }
            for n in range(count)
        ],
    )
    session.execute(
        sa.insert(CachedBlob),
        [
            {
                "group_id": group_id,
                "digest": sha256(b"blob %d %d" % (group_id, n)),
                "size": n,
                "status": Status.DEFAULT,
                "created_at": now,
                "last_read_at": now,
            }
            for n in range(count)
        ],
    )
    session.commit()


def rows(
    table: type[CachedManifest] | type[CachedBlob], group_id: int | None = None
) -> list[t.Any]:
    """``(digest, status)`` of a table's rows, optionally of one group."""
    session = state(None).metadata.session
    query = sa.select(table.digest, table.status).order_by(table.id)
    if group_id is not None:
        query = query.where(table.group_id == group_id)
    found = [(digest, Status(status)) for digest, status in session.execute(query)]
    session.rollback()
    return found
