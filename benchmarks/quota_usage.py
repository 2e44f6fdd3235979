"""How long summing a group's usage takes (the check behind per-group size limits).

One group with 100,000 manifests and 100,000 blobs beside five groups of 20,000 each,
summed as :class:`flask_dependency_proxy.models.quota.QuotaRecords.usage` does, with the
``(group_id, status, size)`` usage indexes and without them.

    python benchmarks/quota_usage.py [--url postgresql://...]   # default: SQLite in /tmp
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import sqlalchemy as sa

from flask_dependency_proxy.models.tables import Base, CachedBlob, CachedManifest, Status

_USAGE_INDEXES = ("ix_dependency_proxy_manifests_usage", "ix_dependency_proxy_blobs_usage")


def _fill(engine: sa.Engine) -> None:
    content = b"x" * 1500  # about what an image manifest weighs
    with engine.begin() as connection:
        for group, count in [(1, 100_000)] + [(g, 20_000) for g in range(2, 7)]:
            connection.execute(
                sa.insert(CachedManifest),
                [
                    {
                        "group_id": group,
                        "image": f"image-{n % 50}",
                        "tag": f"t{n}",
                        "digest": f"sha256:{n:064x}",
                        "media_type": "application/vnd.oci.image.manifest.v1+json",
                        "size": len(content),
                        "content": content,
                        "status": Status.DEFAULT,
                    }
                    for n in range(count)
                ],
            )
            connection.execute(
                sa.insert(CachedBlob),
                [
                    {
                        "group_id": group,
                        "digest": f"sha256:{n:064x}",
                        "size": 1000 + n,
                        "status": Status.DEFAULT,
                    }
                    for n in range(count)
                ],
            )


def _usage(connection: sa.Connection, group: int) -> int:
    return sum(
        connection.execute(
            sa.select(sa.func.coalesce(sa.func.sum(table.size), 0)).where(
                table.group_id == group, table.status == Status.DEFAULT
            )
        ).scalar_one()
        for table in (CachedManifest, CachedBlob)
    )


def _median_ms(engine: sa.Engine, group: int, repetitions: int = 9) -> float:
    with engine.connect() as connection:
        times = []
        for _ in range(repetitions):
            started = time.perf_counter()
            _usage(connection, group)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="an empty database (default: a new SQLite file)")
    args = parser.parse_args()
    folder = tempfile.mkdtemp(prefix="quota-usage-")
    engine = sa.create_engine(args.url or f"sqlite:///{os.path.join(folder, 'usage.db')}")
    Base.metadata.create_all(engine)
    try:
        _fill(engine)
        if engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
                c.execute(sa.text("VACUUM ANALYZE"))
        rows = [("with the usage indexes", _median_ms(engine, 1), _median_ms(engine, 2))]
        with engine.begin() as connection:
            for name in _USAGE_INDEXES:
                connection.execute(sa.text(f"DROP INDEX {name}"))
        rows.append(("without them", _median_ms(engine, 1), _median_ms(engine, 2)))
    finally:
        Base.metadata.drop_all(engine)
    print(f"{engine.dialect.name}: median of 9 usage sums (ms)")
    print("| | 100k manifests + 100k blobs | 20k + 20k |")
    print("| --- | --- | --- |")
    for label, large, small in rows:
        print(f"| {label} | {large:.1f} | {small:.1f} |")


if __name__ == "__main__":
    main()
