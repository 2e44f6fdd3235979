"""The suite's object store holds as many buckets as a whole session creates."""

from __future__ import annotations

from tests.support.seaweedfs import SeaweedFS


def test_a_session_can_write_into_many_fresh_buckets(seaweedfs: SeaweedFS) -> None:
    buckets = [seaweedfs.new_bucket() for _ in range(24)]
    for bucket in buckets:
        seaweedfs.client.put_object(Bucket=bucket, Key="probe", Body=b"probe")
    assert [seaweedfs.objects(bucket) for bucket in buckets] == [["probe"]] * len(buckets)
