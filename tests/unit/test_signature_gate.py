"""The signature gate on the cache's core (:class:`flask_dependency_proxy.cache.signing.
SignatureGate`), with a real cosign vector (tests/data/cosign/cimage-key-valid) in the
fake upstream under the names cosign gives it: the groups' policies are kept in memory,
so a warm pull costs no query (policy off) or one in-memory lookup (policy on); a change
applies at once in the worker that made it and within the refresh in the others; groups
without a policy of their own follow the instance's default; an index follows the
policy's index rule."""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa

from flask_dependency_proxy.cache.signing import PolicyError, SignatureGate, normalize_policy
from flask_dependency_proxy.models.signatures import SignatureRecords
from flask_dependency_proxy.oci.reference import (
    MEDIA_TYPE_DOCKER_MANIFEST,
    MEDIA_TYPE_OCI_INDEX,
    MEDIA_TYPE_OCI_MANIFEST,
    ProxyPath,
)
from flask_dependency_proxy.signatures import Status
from tests.support.core import Core

VECTOR = Path(__file__).resolve().parent.parent / "data" / "cosign" / "cimage-key-valid"
GROUP = 1
OTHER_GROUP = 2
IMAGE = "team/signed"
PATH = ProxyPath("acme", IMAGE)
ACCEPT = (MEDIA_TYPE_OCI_MANIFEST, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_DOCKER_MANIFEST)
KEY = (VECTOR / "cosign.pub").read_text()
OTHER_KEY = (VECTOR / "cosign2.pub").read_text()

MakeCore = t.Callable[..., Core]


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _gate(core: Core, monotonic: Monotonic, **options: t.Any) -> SignatureGate:
    return SignatureGate(
        records=SignatureRecords(lambda: core.metadata.session),
        database=core.metadata.database,
        roots=None,
        recheck_seconds=300,
        clock=core.clock,
        refresh_seconds=60,
        monotonic=monotonic,
        **options,
    )


def _push_signed(core: Core, repository: str = IMAGE) -> str:
    """The vector's signed manifest by its exact bytes, and its ``.sig`` tag."""
    manifest = (VECTOR / "manifest.json").read_bytes()
    digest = core.upstream.push_manifest(
        repository, manifest, tag="v1", media_type=MEDIA_TYPE_DOCKER_MANIFEST
    )
    descriptor = json.loads((VECTOR / "derived" / "signature-1.layer-descriptor.json").read_text())
    core.upstream.push_blob(repository, (VECTOR / "derived" / "signature-1.payload").read_bytes())
    config = core.upstream.push_blob(repository, b"{}")
    sig = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_MANIFEST,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config,
                "size": 2,
            },
            "layers": [descriptor],
        }
    ).encode()
    core.upstream.push_manifest(repository, sig, tag=digest.replace(":", "-") + ".sig")
    return digest


def _pull(core: Core, gate: SignatureGate, reference: str, group: int = GROUP) -> t.Any:
    result = core.cache.get_manifest(group, PATH, reference, ACCEPT)
    decision = gate.check(core.cache, group, PATH, reference, result)
    core.metadata.release()
    return decision


def _statements_of(core: Core, action: t.Callable[[], t.Any]) -> tuple[t.Any, list[str]]:
    statements: list[str] = []

    def count(conn: t.Any, cursor: t.Any, statement: str, *args: t.Any) -> None:
        statements.append(statement)

    sa.event.listen(core.db.engine, "before_cursor_execute", count)
    try:
        return action(), statements
    finally:
        sa.event.remove(core.db.engine, "before_cursor_execute", count)


def _enforce(gate: SignatureGate, group: int = GROUP, **fields: t.Any) -> None:
    gate.save_policy(group, {"mode": "enforce", "keys": [{"name": "vector", "pem": KEY}], **fields})


def test_a_warm_pull_reads_no_policy_row_with_the_policy_off_or_on(make_core: MakeCore) -> None:
    core, monotonic = make_core(), Monotonic()
    gate = _gate(core, monotonic)
    digest = _push_signed(core)
    result = core.cache.get_manifest(GROUP, PATH, "v1", ACCEPT)
    assert gate.check(core.cache, GROUP, PATH, "v1", result) is None  # loads the policies
    core.metadata.release()

    decision, statements = _statements_of(
        core, lambda: gate.check(core.cache, GROUP, PATH, "v1", result)
    )
    assert decision is None
    assert statements == [], "policy off: no query"

    _enforce(gate)
    core.metadata.release()
    first = _pull(core, gate, "v1")
    assert (first.verdict.status, first.verdict.signer) == (Status.VERIFIED, "vector")
    warm, statements = _statements_of(
        core, lambda: gate.check(core.cache, GROUP, PATH, "v1", result)
    )
    assert warm == first and statements == [], "policy on, warm: found in memory"
    assert result.digest == digest


def test_a_change_applies_at_once_here_and_within_the_refresh_elsewhere(
    make_core: MakeCore,
) -> None:
    core, monotonic = make_core(), Monotonic()
    here, elsewhere = _gate(core, monotonic), _gate(core, monotonic)
    _push_signed(core)
    assert _pull(core, elsewhere, "v1") is None
    _enforce(here)
    core.metadata.release()
    assert _pull(core, here, "v1").verdict.status is Status.VERIFIED
    assert _pull(core, elsewhere, "v1") is None, "the other worker's policies are 59 s old"
    monotonic.now += 60
    decision = _pull(core, elsewhere, "v1")
    assert decision is not None and decision.mode == "enforce"
    assert decision.verdict.status is Status.VERIFIED

    here.save_policy(GROUP, {"mode": "enforce", "keys": [{"name": "other", "pem": OTHER_KEY}]})
    core.metadata.release()
    refused = _pull(core, here, "v1")
    assert refused.refused and refused.verdict.status is Status.INVALID


def test_groups_without_a_policy_of_their_own_follow_the_instance_default(
    make_core: MakeCore,
) -> None:
    core, monotonic = make_core(), Monotonic()
    default = normalize_policy(
        {"mode": "enforce", "keys": [{"name": "instance", "pem": OTHER_KEY}]}, roots=None
    )
    gate = _gate(core, monotonic, default=default)
    _push_signed(core)
    refused = _pull(core, gate, "v1")
    assert refused.refused and refused.verdict.status is Status.INVALID
    shown = gate.policy(GROUP)
    assert (shown["default"], shown["mode"], shown["keys"][0]["name"]) == (
        True,
        "enforce",
        "instance",
    )

    gate.save_policy(GROUP, {"mode": "off"})  # a group may opt out
    core.metadata.release()
    assert _pull(core, gate, "v1") is None
    assert gate.policy(GROUP)["default"] is False
    _enforce(gate)
    core.metadata.release()
    assert _pull(core, gate, "v1").verdict.signer == "vector"

    assert gate.use_default(GROUP)["default"] is True
    core.metadata.release()
    assert _pull(core, gate, "v1").refused
    assert gate.policy(GROUP) == {**default, "default": True}


def test_the_platforms_rule_passes_the_index_and_checks_each_platform_manifest(
    make_core: MakeCore,
) -> None:
    core, monotonic = make_core(), Monotonic()
    gate = _gate(core, monotonic)
    signed = _push_signed(core)
    unsigned = core.upstream.push_image(IMAGE, None)
    manifest = (VECTOR / "manifest.json").read_bytes()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_OCI_INDEX,
            "manifests": [
                {
                    "mediaType": MEDIA_TYPE_DOCKER_MANIFEST,
                    "digest": signed,
                    "size": len(manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                },
                {
                    "mediaType": MEDIA_TYPE_OCI_MANIFEST,
                    "digest": unsigned.digest,
                    "size": len(unsigned.manifest),
                    "platform": {"architecture": "arm64", "os": "linux"},
                },
            ],
        }
    ).encode()
    core.upstream.push_manifest(IMAGE, index, tag="multi", media_type=MEDIA_TYPE_OCI_INDEX)

    _enforce(gate)
    core.metadata.release()
    assert gate.policy(GROUP)["index_rule"] == "index"
    by_index = _pull(core, gate, "multi")
    assert by_index.refused and by_index.verdict.status is Status.UNSIGNED

    _enforce(gate, index_rule="platforms")
    core.metadata.release()
    assert gate.policy(GROUP)["index_rule"] == "platforms"
    assert _pull(core, gate, "multi") is None, "the index passes: its platforms are checked"
    assert _pull(core, gate, signed).verdict.signer == "vector"
    refused = _pull(core, gate, unsigned.digest)
    assert refused.refused and refused.verdict.status is Status.UNSIGNED

    with pytest.raises(PolicyError, match="index_rule must be one of index, platforms"):
        _enforce(gate, index_rule="each")
