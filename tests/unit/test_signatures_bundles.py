"""Sigstore bundles v0.3 (cosign v3's referrers), verified on the two real bundles of
tests/data/cosign/ (a copy of the shared ``testdata/cosign/``; its README names their
provenance): DSSE over an in-toto statement whose subject is the image digest, the
Fulcio leaf chained to the trusted root at Rekor's time, the SET, the inclusion proof
and the checkpoint. Also the lower-level checks the legacy vectors cannot reach alone.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import typing as t
from pathlib import Path

import pytest
from cryptography import x509

from flask_dependency_proxy.signatures import (
    IdentitySigner,
    SignatureVerifier,
    Status,
    TrustPolicy,
    TrustRoot,
    Verdict,
    bundle_layer_descriptor,
)
from flask_dependency_proxy.signatures.bundles import check_statement
from flask_dependency_proxy.signatures.certificates import verify_chain
from flask_dependency_proxy.signatures.errors import CertificateError, SignatureError

VECTORS = Path(__file__).resolve().parent.parent / "data" / "cosign"
ATTESTED = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4"
KUBEWARDEN = "sha256:c811d58de79c92f03214e63aa339484e488d694ae8a6283b5f3f17a9faf50172"
KUBEWARDEN_WORKFLOW = (
    "https://github.com/kubewarden/kubewarden-controller/.github/workflows/release.yml"
)
GITHUB_ACTIONS = "https://token.actions.githubusercontent.com"
GITHUB_LOGIN = "https://github.com/login/oauth"
BUNDLE_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"


def read(path: str) -> bytes:
    return (VECTORS / path).read_bytes()


def attestation() -> dict[str, t.Any]:
    return t.cast(
        dict[str, t.Any],
        json.loads(read("cosign-bundle-attestation/oci-attestation.sigstore.json")),
    )


def kubewarden() -> dict[str, t.Any]:
    return t.cast(dict[str, t.Any], json.loads(read("sigstore-rs-bundle-v03-sign/bundle_v03.json")))


def check(
    digest: str,
    bundle: dict[str, t.Any] | bytes,
    *,
    issuer: str = GITHUB_LOGIN,
    subject: str = "cody@soyland.com",
    root: str = "cosign-bundle-attestation/trusted_root_pgi.json",
    roots: TrustRoot | None = None,
) -> Verdict:
    policy = TrustPolicy(
        identities=(IdentitySigner(issuer=issuer, subject=subject),),
        roots=roots or TrustRoot.from_trusted_root_json(read(root)),
    )
    raw = bundle if isinstance(bundle, bytes) else json.dumps(bundle).encode()
    return SignatureVerifier(policy).verify(digest, bundles=[raw])


def check_kubewarden(
    digest: str = KUBEWARDEN, bundle: dict[str, t.Any] | None = None, **kw: t.Any
) -> Verdict:
    options: dict[str, t.Any] = {
        "issuer": GITHUB_ACTIONS,
        "subject": KUBEWARDEN_WORKFLOW + "@refs/tags/v1.34.0",
        "root": "sigstore-rs-bundle-v03-sign/trusted_root.json",
    }
    options.update(kw)
    return check(digest, bundle if bundle is not None else kubewarden(), **options)


@pytest.mark.chain_verification
def test_the_cosign_attestation_bundle_verifies_for_the_empty_image() -> None:
    manifest = read("cosign-bundle-attestation/derived/empty-image-manifest.json")
    assert "sha256:" + hashlib.sha256(manifest).hexdigest() == ATTESTED
    verdict = check(ATTESTED, read("cosign-bundle-attestation/oci-attestation.sigstore.json"))
    assert verdict.status is Status.VERIFIED, verdict
    assert verdict.signer == "cody@soyland.com (https://github.com/login/oauth)"
    assert verdict.signed_at == 1740770291


@pytest.mark.chain_verification
def test_the_same_bundle_attached_to_another_image_is_rejected() -> None:
    verdict = check("sha256:" + "1" * 64, attestation())
    assert verdict.status is Status.INVALID
    assert "subject" in verdict.reason


@pytest.mark.chain_verification
def test_the_attestation_bundle_is_not_trusted_for_another_identity() -> None:
    verdict = check(ATTESTED, attestation(), subject="wrong@soyland.com")
    assert verdict.status is Status.INVALID
    assert "identity" in verdict.reason


@pytest.mark.chain_verification
def test_the_cosign_v3_signature_bundle_verifies_for_its_digest_and_a_tag_pattern() -> None:
    verdict = check_kubewarden()
    assert verdict.status is Status.VERIFIED, verdict
    assert verdict.signed_at == 1775719409
    assert KUBEWARDEN_WORKFLOW in verdict.signer and GITHUB_ACTIONS in verdict.signer
    pattern = check_kubewarden(subject=KUBEWARDEN_WORKFLOW + "@refs/tags/*")
    assert pattern.status is Status.VERIFIED
    other_repo = check_kubewarden(
        subject="https://github.com/kubewarden/other/.github/workflows/release.yml@refs/tags/*"
    )
    assert other_repo.status is Status.INVALID


def test_the_signature_bundle_is_invalid_for_the_all_zero_digest() -> None:
    assert check_kubewarden("sha256:" + "0" * 64).status is Status.INVALID


def _edit_statement(bundle: dict[str, t.Any], change: t.Callable[[dict[str, t.Any]], None]) -> None:
    envelope = bundle["dsseEnvelope"]
    statement = json.loads(base64.b64decode(envelope["payload"]))
    change(statement)
    envelope["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()


@pytest.mark.parametrize(
    "tamper",
    [
        lambda b: b["dsseEnvelope"].update(payloadType="application/json"),
        lambda b: b["dsseEnvelope"].update(signatures=[]),
        lambda b: b["dsseEnvelope"].update(signatures=b["dsseEnvelope"]["signatures"] * 2),
        lambda b: b.update(mediaType="application/vnd.dev.sigstore.bundle+json;version=0.1"),
        lambda b: _edit_statement(b, lambda s: s.update(_type="https://in-toto.io/Statement/v9")),
        lambda b: _edit_statement(b, lambda s: s["subject"][0]["digest"].update(sha256="1" * 64)),
        lambda b: b["verificationMaterial"].update(tlogEntries=[]),
        lambda b: b["verificationMaterial"]["tlogEntries"][0].update(integratedTime="1775719410"),
        lambda b: b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["hashes"].reverse(),
        lambda b: b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"].update(
            rootHash=base64.b64encode(b"\0" * 32).decode()
        ),
        lambda b: b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"][
            "checkpoint"
        ].update(
            envelope=b["verificationMaterial"]["tlogEntries"][0]["inclusionProof"]["checkpoint"][
                "envelope"
            ].replace("\n1139201557\n", "\n1139201558\n")
        ),
    ],
    ids=[
        "payload-type",
        "no-signature",
        "two-signatures",
        "bundle-media-type",
        "statement-type",
        "statement-subject",
        "no-tlog-entry",
        "integrated-time",
        "inclusion-path",
        "root-hash",
        "checkpoint",
    ],
)
def test_a_tampered_bundle_is_rejected(tamper: t.Callable[[dict[str, t.Any]], None]) -> None:
    bundle = kubewarden()
    tamper(bundle)
    verdict = check_kubewarden(bundle=bundle)
    assert verdict.status is Status.INVALID, verdict


@pytest.mark.chain_verification
def test_without_the_log_key_a_bundle_fails_closed() -> None:
    roots = TrustRoot.from_pem(roots=read("cimage-fulcio-rekor-valid/fulcio_v1.crt.pem"))
    verdict = check_kubewarden(roots=roots)
    assert verdict.status is Status.INVALID
    wrong_log = TrustRoot.from_pem(
        roots=read("cimage-fulcio-rekor-valid/fulcio_v1.crt.pem"),
        log_keys=[read("cimage-key-valid/cosign.pub")],
    )
    assert check_kubewarden(roots=wrong_log).status is Status.INVALID
    # The same parts as PEM files instead of a trusted_root.json verify; a bundle
    # carries no chain, so the intermediate comes from the configuration too.
    right = TrustRoot.from_pem(
        roots=read("cimage-fulcio-rekor-valid/fulcio_v1.crt.pem"),
        intermediates=read("cimage-fulcio-rekor-unit/fulcio-chain"),
        log_keys=[read("cimage-fulcio-rekor-valid/rekor.pub")],
    )
    assert check_kubewarden(roots=right).status is Status.VERIFIED


def test_a_bundle_that_is_not_json_is_invalid_not_an_error() -> None:
    for raw in (b"\xff{", b"[1]", b"{}"):
        verdict = check(KUBEWARDEN, raw)
        assert verdict.status is Status.INVALID, raw


def test_the_bundle_layer_of_a_referrer_manifest() -> None:
    """cosign's referrer: artifactType and one layer of the bundle media type."""
    layer = {"mediaType": BUNDLE_TYPE, "size": 5004, "digest": "sha256:" + "12" * 32}
    referrer = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": BUNDLE_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.empty.v1+json",
            "artifactType": BUNDLE_TYPE,
            "size": 2,
            "digest": "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
        },
        "layers": [layer],
        "subject": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "size": 264,
            "digest": ATTESTED,
        },
    }
    assert bundle_layer_descriptor(json.dumps(referrer).encode()) == layer
    sbom = dict(referrer, artifactType="application/spdx+json")
    assert bundle_layer_descriptor(json.dumps(sbom).encode()) is None


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda s: s.update(_type="https://in-toto.io/Statement/v9"), "not an in-toto statement"),
        (lambda s: s.update(subject=[{"digest": {"sha512": "c811d58d"}}]), "no subject"),
        (lambda s: s.update(subject="c811d58d"), "no subjects"),
        (lambda s: s.update(predicateType="https://slsa.dev/provenance/v1"), "predicate type"),
    ],
)
def test_the_statement_must_name_the_digest_with_an_accepted_predicate(
    change: t.Callable[[dict[str, t.Any]], None], reason: str
) -> None:
    """The signed statement of the cosign v3 vector, checked without its signature."""
    policy = TrustPolicy(predicate_types=("https://sigstore.dev/cosign/sign/v1",))
    statement = read("sigstore-rs-bundle-v03-sign/derived/statement.json")
    check_statement(statement, KUBEWARDEN, policy)
    document = json.loads(statement)
    change(document)
    with pytest.raises(SignatureError, match=reason):
        check_statement(json.dumps(document).encode(), KUBEWARDEN, policy)


# -- the certificate chain at a given time (cimage-fulcio-rekor-unit) ----------------------


def _unit_chain() -> tuple[x509.Certificate, list[x509.Certificate], list[x509.Certificate]]:
    folder = "cimage-fulcio-rekor-unit"
    leaf = x509.load_pem_x509_certificate(read(f"{folder}/fulcio-cert"))
    chain = x509.load_pem_x509_certificates(read(f"{folder}/fulcio-chain"))
    roots = x509.load_pem_x509_certificates(read(f"{folder}/fulcio_v1.crt.pem"))
    return leaf, chain[:-1], roots


@pytest.mark.chain_verification
def test_the_fulcio_leaf_chains_to_the_root_at_rekors_time() -> None:
    leaf, intermediates, roots = _unit_chain()
    at = datetime.datetime.fromtimestamp(1670870899, datetime.UTC)
    verify_chain(leaf, intermediates, roots, at=at)


@pytest.mark.parametrize(
    "at",
    [
        datetime.datetime(2022, 12, 12, 18, 48, 17, tzinfo=datetime.UTC),
        datetime.datetime(2022, 12, 12, 18, 58, 19, tzinfo=datetime.UTC),
    ],
)
def test_the_fulcio_leaf_is_invalid_outside_its_ten_minutes(at: datetime.datetime) -> None:
    leaf, intermediates, roots = _unit_chain()
    with pytest.raises(CertificateError):
        verify_chain(leaf, intermediates, roots, at=at)


def test_the_fulcio_leaf_needs_its_intermediate() -> None:
    leaf, _, roots = _unit_chain()
    with pytest.raises(CertificateError):
        verify_chain(leaf, [], roots, at=datetime.datetime.fromtimestamp(1670870899, datetime.UTC))


def _paths(value: t.Any, path: tuple[t.Any, ...] = ()) -> t.Iterator[tuple[t.Any, ...]]:
    """Every field of a JSON document (only the first item of a list)."""
    if path:
        yield path
    if isinstance(value, dict):
        for name, item in value.items():
            yield from _paths(item, (*path, name))
    elif isinstance(value, list) and value:
        yield from _paths(value[0], (*path, 0))


def test_any_field_of_a_bundle_of_the_wrong_type_gives_an_invalid_verdict() -> None:
    """What a registry serves is never trusted to be well formed: every field replaced
    by a value of another type is an invalid verdict with a reason, never an exception."""
    tried = 0
    for path in _paths(attestation()):
        for wrong in (None, 7, "x", [], {}):
            bundle = attestation()
            parent = bundle
            for step in path[:-1]:
                parent = parent[step]
            parent[path[-1]] = wrong
            verdict = check(ATTESTED, bundle)
            assert verdict.status is Status.INVALID and verdict.reason, (path, wrong)
            tried += 1
    assert tried > 100
