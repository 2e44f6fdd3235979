"""Cosign's legacy ``.sig`` signatures, verified on real vectors made by the real cosign
tool (and one by skopeo): tests/data/cosign/ is a copy of the project's shared
``testdata/cosign/`` folder, whose README names each vector's provenance and expected
result. The verifier must accept the real signatures and reject the tampered ones, in
process and with no network.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
from pathlib import Path

import pytest

from flask_dependency_proxy.signatures import (
    IdentitySigner,
    KeySigner,
    SignatureLayer,
    SignatureVerifier,
    Status,
    TrustPolicy,
    TrustRoot,
    Verdict,
    signature_layer,
    signature_layer_descriptors,
    signature_tag,
)
from flask_dependency_proxy.signatures.certificates import chain_verification_available

VECTORS = Path(__file__).resolve().parent.parent / "data" / "cosign"
SIGNED = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"
REKOR_SIGNED = "sha256:0489474da8ea22426ece86ace6c1c0026ab2fd3cdfbbd62b7e94650266c37d9a"
PKI_SIGNED = "sha256:253c890b744fe3efa923b68e3a1be07bd007eb44ba29da1e7deb1d4c53b3e212"
UNIT_SIGNED = "sha256:fa93b01658e3a5a1686dc3ae55f170d8de487006fb53a28efcd12ab0710a2e5f"
GITHUB_LOGIN = "https://github.com/login/oauth"
SIGNATURE = "dev.cosignproject.cosign/signature"
BUNDLE = "dev.sigstore.cosign/bundle"
CERTIFICATE = "dev.sigstore.cosign/certificate"
CHAIN = "dev.sigstore.cosign/chain"
#: Long after every short-lived Fulcio leaf here expired, before the roots do.
TODAY = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)


def read(path: str) -> bytes:
    return (VECTORS / path).read_bytes()


def layer(folder: str, name: str = "signature-1") -> SignatureLayer:
    """One layer of the ``.sig`` manifest as a registry serves it: the descriptor and the
    payload blob it names (the README's ``derived/`` files)."""
    descriptor = json.loads(read(f"{folder}/derived/{name}.layer-descriptor.json"))
    return signature_layer(descriptor, read(f"{folder}/derived/{name}.payload"))


def key(folder: str, name: str) -> KeySigner:
    return KeySigner.from_pem(read(f"{folder}/{name}"), name=name)


def verify(
    digest: str,
    layers: list[SignatureLayer],
    *,
    keys: tuple[KeySigner, ...] = (),
    identities: tuple[IdentitySigner, ...] = (),
    roots: TrustRoot | None = None,
    now: datetime.datetime = TODAY,
) -> Verdict:
    policy = TrustPolicy(keys=keys, identities=identities, roots=roots)
    return SignatureVerifier(policy, now=lambda: now).verify(digest, layers=layers)


def digest_of(path: str) -> str:
    return "sha256:" + hashlib.sha256(read(path)).hexdigest()


# -- key-based (cimage-key-*) --------------------------------------------------------------


def test_a_cosign_key_signature_verifies_against_the_exact_manifest_bytes() -> None:
    """The README's first vector: sha256 of manifest.json is the signed digest."""
    assert digest_of("cimage-key-valid/manifest.json") == SIGNED
    verdict = verify(
        SIGNED, [layer("cimage-key-valid")], keys=(key("cimage-key-valid", "cosign.pub"),)
    )
    assert verdict.status is Status.VERIFIED, verdict
    assert verdict.signer == "cosign.pub"


def test_another_key_does_not_verify_it() -> None:
    verdict = verify(
        SIGNED, [layer("cimage-key-valid")], keys=(key("cimage-key-valid", "cosign2.pub"),)
    )
    assert verdict.status is Status.INVALID
    assert "no trusted key" in verdict.reason


@pytest.mark.parametrize("order", [("cosign.pub", "cosign2.pub"), ("cosign2.pub", "cosign.pub")])
def test_any_trusted_key_in_any_order_verifies(order: tuple[str, str]) -> None:
    keys = tuple(key("cimage-key-valid", name) for name in order)
    verdict = verify(SIGNED, [layer("cimage-key-valid")], keys=keys)
    assert (verdict.status, verdict.signer) == (Status.VERIFIED, "cosign.pub")


def test_two_signatures_over_the_same_payload_both_verify() -> None:
    trusted = (key("cimage-key-valid-2", "cosign.pub"),)
    for name in ("signature-1", "signature-2"):
        verdict = verify(SIGNED, [layer("cimage-key-valid-2", name)], keys=trusted)
        assert verdict.status is Status.VERIFIED, (name, verdict)


def test_one_valid_signature_is_enough_beside_one_by_an_unknown_key() -> None:
    trusted = (key("cimage-key-mixed", "cosign.pub"),)
    unknown = layer("cimage-key-mixed", "signature-1")
    assert verify(SIGNED, [unknown], keys=trusted).status is Status.INVALID
    assert (
        verify(
            SIGNED, [layer("cimage-key-mixed", "unknown-cosign-key.signature")], keys=trusted
        ).status
        is Status.INVALID
    )
    mixed = [unknown, layer("cimage-key-mixed", "signature-2")]
    assert verify(SIGNED, mixed, keys=trusted).status is Status.VERIFIED


def test_a_valid_signature_over_another_manifest_is_rejected() -> None:
    """cimage-key-modified-manifest: the crypto holds, the digest of the bytes does not."""
    served = digest_of("cimage-key-modified-manifest/manifest.json")
    assert served == "sha256:d9dcafdb480aa7c475e91737b96925e45844213dcb0290b4a90017459121f71f"
    trusted = (key("cimage-key-modified-manifest", "cosign.pub"),)
    verdict = verify(served, [layer("cimage-key-modified-manifest")], keys=trusted)
    assert verdict.status is Status.INVALID
    assert "signs sha256:634a8f35" in verdict.reason
    # The same layer does verify for the digest it names: only the digest check failed.
    assert (
        verify(SIGNED, [layer("cimage-key-modified-manifest")], keys=trusted).status
        is Status.VERIFIED
    )


def test_an_attachment_that_is_not_a_simple_signing_payload_is_rejected() -> None:
    """cimage-other-attachment: text/plain with a copied signature annotation."""
    trusted = (key("cimage-other-attachment", "cosign.pub"),)
    verdict = verify(SIGNED, [layer("cimage-other-attachment")], keys=trusted)
    assert verdict.status is Status.INVALID
    assert "text/plain" in verdict.reason


def test_a_signature_made_by_skopeo_with_a_tag_and_optional_fields_verifies() -> None:
    trusted = (key("cimage-skopeo-valid-with-tag", "cosign.pub"),)
    verdict = verify(SIGNED, [layer("cimage-skopeo-valid-with-tag")], keys=trusted)
    assert verdict.status is Status.VERIFIED, verdict


@pytest.mark.parametrize(
    ("payload", "signature"),
    [
        (
            b"&",
            "MEUCIARnnxZQPALBfqkB4aNAYXad79Qs6VehcrgIeZ8p7I2FAiEAzq2HXwXlz1iJeh+ucUR3L0zpjynQk6Rk0+/gXYp49RU=",
        ),
        (
            b"{}",
            "MEUCIQDkySOBGxastVP0+koTA33NH5hXjwosFau4rxTPN6g48QIgb7eWKkGqfEpHMM3aT4xiqyP/170jEkdFuciuwN4mux4=",
        ),
    ],
)
def test_a_signed_payload_that_is_not_simple_signing_is_rejected(
    payload: bytes, signature: str
) -> None:
    """The two inline vectors of containers/image: cosign.pub signed them, but they say
    nothing about an image."""
    signed = SignatureLayer(
        media_type="application/vnd.dev.cosign.simplesigning.v1+json",
        payload=payload,
        annotations={SIGNATURE: signature},
    )
    verdict = verify(SIGNED, [signed], keys=(key("cimage-key-valid", "cosign.pub"),))
    assert verdict.status is Status.INVALID
    assert "payload" in verdict.reason


@pytest.mark.parametrize(
    "tamper",
    [
        lambda p: p.replace(b"634a8f35", b"634a8f36"),
        lambda p: p + b"\n",
        lambda p: json.dumps(json.loads(p), indent=2).encode(),
    ],
)
def test_the_payload_is_signed_as_raw_bytes(tamper: object) -> None:
    original = layer("cimage-key-valid")
    changed = SignatureLayer(original.media_type, tamper(original.payload), original.annotations)  # type: ignore[operator]
    verdict = verify(SIGNED, [changed], keys=(key("cimage-key-valid", "cosign.pub"),))
    assert verdict.status is Status.INVALID


def test_no_signature_layer_is_unsigned() -> None:
    verdict = verify(SIGNED, [], keys=(key("cimage-key-valid", "cosign.pub"),))
    assert verdict.status is Status.UNSIGNED


def test_a_layer_whose_blob_does_not_match_its_descriptor_is_refused() -> None:
    descriptor = json.loads(read("cimage-key-valid/derived/signature-1.layer-descriptor.json"))
    with pytest.raises(ValueError, match="digest"):
        signature_layer(descriptor, read("cimage-key-valid/derived/signature-1.payload") + b" ")


def test_the_signatures_of_a_digest_are_under_cosigns_sig_tag() -> None:
    assert signature_tag(SIGNED) == SIGNED.replace("sha256:", "sha256-") + ".sig"


def test_the_layers_of_a_sig_manifest_are_its_descriptors() -> None:
    descriptor = json.loads(read("cimage-key-valid/derived/signature-1.layer-descriptor.json"))
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "size": 233,
            "digest": "sha256:" + "c" * 64,
        },
        "layers": [descriptor],
    }
    assert signature_layer_descriptors(json.dumps(manifest).encode()) == [descriptor]
    with pytest.raises(ValueError):
        signature_layer_descriptors(b"not json")


# -- key + Rekor SET (cimage-key-rekor-valid) ----------------------------------------------


def rekor_root(folder: str = "cimage-key-rekor-valid", name: str = "rekor.pub") -> TrustRoot:
    return TrustRoot.from_pem(log_keys=[read(f"{folder}/{name}")])


def test_a_key_signature_with_a_rekor_set_verifies_with_the_log_key() -> None:
    verdict = verify(
        REKOR_SIGNED,
        [layer("cimage-key-rekor-valid")],
        keys=(key("cimage-key-rekor-valid", "cosign2.pub"),),
        roots=rekor_root(),
    )
    assert verdict.status is Status.VERIFIED, verdict
    assert verdict.signer == "cosign2.pub"
    assert verdict.signed_at == 1674251859


def test_the_key_rekor_signature_is_not_cosign_pubs() -> None:
    verdict = verify(
        REKOR_SIGNED,
        [layer("cimage-key-rekor-valid")],
        keys=(key("cimage-key-rekor-valid", "cosign.pub"),),
        roots=rekor_root(),
    )
    assert verdict.status is Status.INVALID


def test_a_set_checked_with_another_log_key_is_rejected() -> None:
    verdict = verify(
        REKOR_SIGNED,
        [layer("cimage-key-rekor-valid")],
        keys=(key("cimage-key-rekor-valid", "cosign2.pub"),),
        roots=rekor_root(name="cosign.pub"),
    )
    assert verdict.status is Status.INVALID
    assert "log" in verdict.reason


def test_with_a_log_key_configured_a_signature_needs_its_set() -> None:
    original = layer("cimage-key-rekor-valid")
    bare = SignatureLayer(
        original.media_type, original.payload, {SIGNATURE: original.annotations[SIGNATURE]}
    )
    trusted = (key("cimage-key-rekor-valid", "cosign2.pub"),)
    assert verify(REKOR_SIGNED, [bare], keys=trusted).status is Status.VERIFIED
    verdict = verify(REKOR_SIGNED, [bare], keys=trusted, roots=rekor_root())
    assert verdict.status is Status.INVALID
    assert "Rekor" in verdict.reason


def _with_set(original: SignatureLayer, change: object) -> SignatureLayer:
    entry = json.loads(original.annotations[BUNDLE])
    change(entry)  # type: ignore[operator]
    annotations = dict(original.annotations)
    annotations[BUNDLE] = json.dumps(entry)
    return SignatureLayer(original.media_type, original.payload, annotations)


@pytest.mark.parametrize(
    "change",
    [
        lambda e: e["Payload"].update(integratedTime=e["Payload"]["integratedTime"] + 1),
        lambda e: e.update(SignedEntryTimestamp=base64.b64encode(b"garbage").decode()),
        lambda e: e["Payload"].update(logIndex=1),
    ],
)
def test_a_changed_set_is_rejected(change: object) -> None:
    verdict = verify(
        REKOR_SIGNED,
        [_with_set(layer("cimage-key-rekor-valid"), change)],
        keys=(key("cimage-key-rekor-valid", "cosign2.pub"),),
        roots=rekor_root(),
    )
    assert verdict.status is Status.INVALID


def test_a_set_grafted_onto_another_signature_is_rejected() -> None:
    """The SET logs one signature, key and payload hash; cosign.pub's layer is not it."""
    grafted = layer("cimage-key-valid")
    annotations = dict(grafted.annotations)
    annotations[BUNDLE] = layer("cimage-key-rekor-valid").annotations[BUNDLE]
    verdict = verify(
        SIGNED,
        [SignatureLayer(grafted.media_type, grafted.payload, annotations)],
        keys=(key("cimage-key-valid", "cosign.pub"),),
        roots=rekor_root(),
    )
    assert verdict.status is Status.INVALID


# -- keyless: Fulcio + Rekor (cimage-fulcio-rekor-valid) -----------------------------------


def fulcio_root(folder: str = "cimage-fulcio-rekor-valid") -> TrustRoot:
    return TrustRoot.from_pem(
        roots=read(f"{folder}/fulcio_v1.crt.pem"), log_keys=[read(f"{folder}/rekor.pub")]
    )


def keyless(
    digest: str = REKOR_SIGNED,
    the_layer: SignatureLayer | None = None,
    *,
    issuer: str | None = GITHUB_LOGIN,
    subject: str = "mitr@redhat.com",
    roots: TrustRoot | None = None,
) -> Verdict:
    return verify(
        digest,
        [the_layer or layer("cimage-fulcio-rekor-valid")],
        identities=(IdentitySigner(issuer=issuer, subject=subject),),
        roots=roots or fulcio_root(),
    )


@pytest.mark.chain_verification
def test_a_keyless_signature_verifies_at_rekors_time_though_its_leaf_has_expired() -> None:
    verdict = keyless()
    assert verdict.status is Status.VERIFIED, verdict
    assert verdict.signer == "mitr@redhat.com (https://github.com/login/oauth)"
    assert verdict.signed_at == 1674247893


@pytest.mark.chain_verification
def test_a_keyless_signature_also_verifies_with_a_trusted_root_json() -> None:
    roots = TrustRoot.from_trusted_root_json(
        read("cosign-bundle-attestation/trusted_root_pgi.json")
    )
    assert keyless(roots=roots).status is Status.VERIFIED


def test_chain_verification_says_what_it_needs() -> None:
    """The package's cryptography floor is 41 (hosts pin it); chains need 45. On 45 and
    later a keyless signature verifies; below, it is refused with a reason that names the
    version, and public-key signatures (above) work either way."""
    verdict = keyless()
    if chain_verification_available():
        assert verdict.status is Status.VERIFIED, verdict
    else:
        assert verdict.status is Status.INVALID
        assert "needs cryptography >= 45" in verdict.reason, verdict.reason


def test_without_a_log_the_keyless_leaf_is_checked_now_and_has_expired() -> None:
    roots = TrustRoot.from_pem(roots=read("cimage-fulcio-rekor-valid/fulcio_v1.crt.pem"))
    verdict = keyless(roots=roots)
    assert verdict.status is Status.INVALID
    assert "certificate" in verdict.reason


@pytest.mark.parametrize(
    ("issuer", "subject"),
    [
        (GITHUB_LOGIN, "someone@redhat.com"),
        ("https://accounts.google.com", "mitr@redhat.com"),
        (GITHUB_LOGIN, "*@example.com"),
    ],
)
@pytest.mark.chain_verification
def test_another_identity_does_not_verify_it(issuer: str, subject: str) -> None:
    verdict = keyless(issuer=issuer, subject=subject)
    assert verdict.status is Status.INVALID
    assert "identity" in verdict.reason


@pytest.mark.chain_verification
def test_an_identity_pattern_matches() -> None:
    assert keyless(subject="*@redhat.com").status is Status.VERIFIED


def test_the_chain_needs_its_intermediate_and_the_root_comes_only_from_configuration() -> None:
    original = layer("cimage-fulcio-rekor-valid")
    annotations = {k: v for k, v in original.annotations.items() if k != CHAIN}
    verdict = keyless(the_layer=SignatureLayer(original.media_type, original.payload, annotations))
    assert verdict.status is Status.INVALID
    # The annotation's chain alone does not make its root trusted.
    other_root = TrustRoot.from_pem(
        roots=read("cimage-pki-valid/pki_root_crts.pem"),
        log_keys=[read("cimage-fulcio-rekor-valid/rekor.pub")],
    )
    assert keyless(roots=other_root).status is Status.INVALID


def test_a_keyless_signature_is_not_trusted_for_a_configured_key() -> None:
    verdict = verify(
        REKOR_SIGNED,
        [layer("cimage-fulcio-rekor-valid")],
        keys=(key("cimage-key-rekor-valid", "cosign2.pub"),),
        roots=fulcio_root(),
    )
    assert verdict.status is Status.INVALID


# -- keyless, loose parts (cimage-fulcio-rekor-unit) ---------------------------------------


def unit_layer(payload: bytes | None = None) -> SignatureLayer:
    folder = "cimage-fulcio-rekor-unit"
    return SignatureLayer(
        media_type="application/vnd.dev.cosign.simplesigning.v1+json",
        payload=payload if payload is not None else read(f"{folder}/rekor-payload"),
        annotations={
            SIGNATURE: read(f"{folder}/rekor-sig").decode(),
            CERTIFICATE: read(f"{folder}/rekor-cert").decode(),
            CHAIN: read(f"{folder}/fulcio-chain").decode(),
            BUNDLE: read(f"{folder}/rekor-set").decode(),
        },
    )


@pytest.mark.chain_verification
def test_the_unit_vectors_parts_verify_as_one_keyless_signature() -> None:
    verdict = keyless(UNIT_SIGNED, unit_layer(), roots=fulcio_root("cimage-fulcio-rekor-unit"))
    assert verdict.status is Status.VERIFIED, verdict
    assert verdict.signed_at == 1670870899


def test_the_unit_vector_is_invalid_for_another_payload() -> None:
    payload = read("cimage-fulcio-rekor-unit/rekor-payload").replace(b"fa93b016", b"fa93b017")
    verdict = keyless(
        UNIT_SIGNED.replace("fa93b016", "fa93b017"),
        unit_layer(payload),
        roots=fulcio_root("cimage-fulcio-rekor-unit"),
    )
    assert verdict.status is Status.INVALID


# -- bring your own PKI (cimage-pki-valid) -------------------------------------------------


def pki(
    the_layer: SignatureLayer | None = None,
    *,
    intermediates: bool = True,
    subject: str = "qiwan@redhat.com",
) -> Verdict:
    folder = "cimage-pki-valid"
    roots = TrustRoot.from_pem(
        roots=read(f"{folder}/pki_root_crts.pem"),
        intermediates=read(f"{folder}/pki_intermediate_crts.pem") if intermediates else b"",
    )
    return verify(
        PKI_SIGNED,
        [the_layer or layer(folder)],
        identities=(IdentitySigner(issuer=None, subject=subject),),
        roots=roots,
    )


@pytest.mark.chain_verification
def test_a_byo_pki_rsa_signature_verifies_with_its_configured_roots() -> None:
    assert digest_of("cimage-pki-valid/manifest.json") == PKI_SIGNED
    verdict = pki()
    assert verdict.status is Status.VERIFIED, verdict
    assert verdict.signer == "qiwan@redhat.com"
    assert verdict.signed_at is None


@pytest.mark.chain_verification
def test_byo_pki_takes_intermediates_from_the_signature_or_the_configuration() -> None:
    assert pki(intermediates=False).status is Status.VERIFIED
    original = layer("cimage-pki-valid")
    annotations = {k: v for k, v in original.annotations.items() if k != CHAIN}
    bare = SignatureLayer(original.media_type, original.payload, annotations)
    assert pki(bare).status is Status.VERIFIED
    assert pki(bare, intermediates=False).status is Status.INVALID


@pytest.mark.chain_verification
def test_byo_pki_matches_the_san_dns_name_and_not_another_email() -> None:
    assert pki(subject="myhost.example.com").status is Status.VERIFIED
    assert pki(subject="other@redhat.com").status is Status.INVALID


# -- the verdict and the policy ------------------------------------------------------------


@pytest.mark.chain_verification
def test_a_verdict_round_trips_through_json_for_the_cache() -> None:
    verdict = keyless()
    again = Verdict.from_json(verdict.to_json())
    assert again == verdict
    assert json.loads(verdict.to_json())["status"] == "verified"


def test_the_policy_fingerprint_changes_with_its_trust_and_only_then() -> None:
    one = TrustPolicy(keys=(key("cimage-key-valid", "cosign.pub"),), roots=fulcio_root())
    same = TrustPolicy(keys=(key("cimage-key-valid", "cosign.pub"),), roots=fulcio_root())
    other = TrustPolicy(keys=(key("cimage-key-valid", "cosign2.pub"),), roots=fulcio_root())
    assert one.fingerprint == same.fingerprint != other.fingerprint
    with_identity = TrustPolicy(
        keys=one.keys, identities=(IdentitySigner(GITHUB_LOGIN, "a@b"),), roots=fulcio_root()
    )
    assert with_identity.fingerprint != one.fingerprint


def test_a_key_that_is_not_a_public_key_pem_is_refused() -> None:
    with pytest.raises(ValueError):
        KeySigner.from_pem(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError):
        TrustRoot.from_trusted_root_json(b"{")


@pytest.mark.parametrize("wrong", [None, 7, "x", [], {}])
def test_any_field_of_a_rekor_set_of_the_wrong_type_gives_an_invalid_verdict(wrong: object) -> None:
    """Registry input is never trusted to be well formed: a bad field is a reason."""
    fields = [("SignedEntryTimestamp",), ("Payload",)] + [
        ("Payload", name) for name in ("body", "integratedTime", "logIndex", "logID")
    ]
    for path in fields:

        def change(entry: dict[str, object], path: tuple[str, ...] = path) -> None:
            parent = entry
            for step in path[:-1]:
                parent = parent[step]  # type: ignore[assignment]
            parent[path[-1]] = wrong

        verdict = verify(
            REKOR_SIGNED,
            [_with_set(layer("cimage-key-rekor-valid"), change)],
            keys=(key("cimage-key-rekor-valid", "cosign2.pub"),),
            roots=rekor_root(),
        )
        assert verdict.status is Status.INVALID and verdict.reason, path


@pytest.mark.parametrize("name", [SIGNATURE, CERTIFICATE, CHAIN, BUNDLE])
def test_a_garbled_annotation_gives_an_invalid_verdict(name: str) -> None:
    original = layer("cimage-fulcio-rekor-valid")
    for garbage in (
        "",
        "x",
        "{}",
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    ):
        annotations = dict(original.annotations)
        annotations[name] = garbage
        verdict = keyless(
            the_layer=SignatureLayer(original.media_type, original.payload, annotations)
        )
        assert verdict.status is Status.INVALID and verdict.reason, (name, garbage)
