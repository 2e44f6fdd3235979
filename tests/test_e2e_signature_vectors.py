"""Every cosign vector that ships its signed manifest, pulled through the live platform
under ``enforce``: the expected result of ``tests/data/cosign/README.md``, at the pull.

Each case's image is the vector's signed manifest pushed into the suite's real upstream
by its exact bytes (its blobs planted: no vector ships layers; a plain HTTP client asks
only for the manifest), with the vector's signatures under the names cosign gives them:
the ``sha256-<hex>.sig`` tag of simple-signing layers (each the ``derived/`` payload as
its blob, with the upstream file's annotations), or the Sigstore bundle as an OCI
referrer with ``subject`` (read through the referrers tag, as the upstream has no
referrers API). The group's policy trusts, for each case's image only (the signer's
``images`` pattern), the signer the case names.

Trust material is instance-wide, and a configured Rekor key makes every signature need
that log's entry, so the cases share two platforms on one upstream:

- ``plain``: no transparency log; the own-PKI roots and intermediates of
  ``cimage-pki-valid`` and the Fulcio root ``fulcio_v1.crt.pem`` (one roots file). The
  key vectors, the PKI vector, and the keyless vector, whose leaf expired ten minutes
  after issue: without a log it is checked now, and refused.
- ``rekor``: ``trusted_root_pgi.json``, ``fulcio_v1.crt.pem`` and ``rekor.pub``. The
  key+Rekor and keyless vectors (checked at Rekor's integrated time), and the cosign v3
  attestation bundle on go-containerregistry's ``empty.Image`` (its exact manifest is
  the folder's ``derived/``) and on another image.

Folders without the signed manifest are checked on their payloads and bundles directly
by the unit tests:

- ``cimage-fulcio-rekor-unit`` (it names ``fa93b016…``, not included): in
  ``tests/unit/test_signatures.py``,
  ``test_the_unit_vectors_parts_verify_as_one_keyless_signature`` and
  ``test_the_unit_vector_is_invalid_for_another_payload``; its leaf's ten minutes in
  ``tests/unit/test_signatures_bundles.py``,
  ``test_the_fulcio_leaf_chains_to_the_root_at_rekors_time``,
  ``test_the_fulcio_leaf_is_invalid_outside_its_ten_minutes`` and
  ``test_the_fulcio_leaf_needs_its_intermediate``.
- ``sigstore-rs-bundle-v03-sign`` (kubewarden-controller ``c811d58d…``, not included):
  in ``tests/unit/test_signatures_bundles.py``,
  ``test_the_cosign_v3_signature_bundle_verifies_for_its_digest_and_a_tag_pattern``,
  ``test_the_signature_bundle_is_invalid_for_the_all_zero_digest``,
  ``test_a_tampered_bundle_is_rejected`` and
  ``test_without_the_log_key_a_bundle_fails_closed``.
- containers/image's inline ``&`` and ``{}`` payloads: in
  ``tests/unit/test_signatures.py``,
  ``test_a_signed_payload_that_is_not_simple_signing_is_rejected``.
"""

from __future__ import annotations

import json
import typing as t
from pathlib import Path

import pytest
import requests

from tests.support import artifacts, images, seed
from tests.support.platform import Platform, PlatformFactory
from tests.support.processes import ProcessFactory
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e
#: The subject is the vectors, not the database: SQLite only.
UNWANTED_COMBINATIONS = [{"database_backend": "postgresql"}]

VECTORS = Path(__file__).parent / "data" / "cosign"
GROUP = seed.ACME
USER = seed.ALICE
OWNER = seed.Account("olivia", "olivia-password-0001")
HEADER = "X-Dependency-Proxy-Signature"
GITHUB = "https://github.com/login/oauth"


class Case(t.NamedTuple):
    """One pull of one vector: what is pushed, what the policy trusts, what to expect."""

    name: str
    platform: str  # "plain" or "rekor"
    manifest: str  # the signed manifest's exact bytes, under VECTORS
    signatures: tuple[str, ...] = ()  # "<folder>/<file>": layers of the .sig tag
    bundle: str | None = None  # a Sigstore bundle, attached as a referrer
    keys: tuple[str, ...] = ()  # trusted PEM keys, under VECTORS
    identity: tuple[str | None, str] | None = None  # trusted (issuer, subject)
    tag: str | None = None  # the vector's own tag, pulled too
    signer: str | None = None  # verified by; None: refused
    reason: str = ""  # why refused (the start of the verifier's reason)

    @property
    def image(self) -> str:
        return f"vectors/{self.name}"


KEY_MANIFEST = "cimage-key-valid/manifest.json"
COSIGN = "cimage-key-valid/cosign.pub"
COSIGN2 = "cimage-key-valid/cosign2.pub"
KEY_DIGEST = "sha256:634a8f35b5f16dcf4aaa0822adc0b1964bb786fca12f6831de8ddc45e5986a00"
REKOR_DIGEST = "sha256:0489474da8ea22426ece86ace6c1c0026ab2fd3cdfbbd62b7e94650266c37d9a"
EMPTY_DIGEST = "sha256:732112270d7e59418a8c080b134b24cabd67d250d0d0147a97ed95ba5c280aa4"
MODIFIED_DIGEST = "sha256:d9dcafdb480aa7c475e91737b96925e45844213dcb0290b4a90017459121f71f"
EMPTY_MANIFEST = "cosign-bundle-attestation/derived/empty-image-manifest.json"
EMPTY_CONFIG = "cosign-bundle-attestation/derived/empty-image-config.json"
BUNDLE = "cosign-bundle-attestation/oci-attestation.sigstore.json"

CASES = [
    Case(
        "key-valid",
        "plain",
        KEY_MANIFEST,
        ("cimage-key-valid/signature-1",),
        keys=(COSIGN,),
        signer="cosign",
    ),
    Case(
        "key-valid-wrong-key",
        "plain",
        KEY_MANIFEST,
        ("cimage-key-valid/signature-1",),
        keys=(COSIGN2,),
        reason="no trusted key verifies the signature",
    ),
    Case(
        "key-valid-2",
        "plain",
        "cimage-key-valid-2/manifest.json",
        ("cimage-key-valid-2/signature-1", "cimage-key-valid-2/signature-2"),
        keys=("cimage-key-valid-2/cosign.pub",),
        signer="cosign",
    ),
    Case(
        "key-mixed",
        "plain",
        "cimage-key-mixed/manifest.json",
        ("cimage-key-mixed/signature-1", "cimage-key-mixed/signature-2"),
        keys=("cimage-key-mixed/cosign.pub",),
        signer="cosign",
    ),
    Case(
        "key-mixed-unknown-key-only",
        "plain",
        "cimage-key-mixed/manifest.json",
        ("cimage-key-mixed/unknown-cosign-key.signature",),
        keys=("cimage-key-mixed/cosign.pub",),
        reason="no trusted key verifies the signature",
    ),
    Case(
        "key-modified-manifest",
        "plain",
        "cimage-key-modified-manifest/manifest.json",
        ("cimage-key-modified-manifest/signature-1",),
        keys=("cimage-key-modified-manifest/cosign.pub",),
        reason=f"the signature signs {KEY_DIGEST}, not {MODIFIED_DIGEST}",
    ),
    Case(
        "other-attachment",
        "plain",
        "cimage-other-attachment/manifest.json",
        ("cimage-other-attachment/signature-1",),
        keys=("cimage-other-attachment/cosign.pub",),
        reason="media type text/plain is not a cosign simple-signing payload",
    ),
    Case(
        "skopeo-valid-with-tag",
        "plain",
        "cimage-skopeo-valid-with-tag/manifest.json",
        ("cimage-skopeo-valid-with-tag/signature-1",),
        keys=("cimage-skopeo-valid-with-tag/cosign.pub",),
        tag="tag",
        signer="cosign",
    ),
    Case(
        "pki-valid",
        "plain",
        "cimage-pki-valid/manifest.json",
        ("cimage-pki-valid/signature-1",),
        identity=(None, "qiwan@redhat.com"),
        signer="qiwan@redhat.com",
    ),
    Case(
        "fulcio-rekor-valid-checked-now",
        "plain",
        "cimage-fulcio-rekor-valid/manifest.json",
        ("cimage-fulcio-rekor-valid/signature-1",),
        identity=(GITHUB, "mitr@redhat.com"),
        reason=(
            "the certificate does not chain to a trusted root: validation failed:"
            " cert is not valid at validation time"
        ),
    ),
    Case(
        "key-rekor-valid",
        "rekor",
        "cimage-key-rekor-valid/manifest.json",
        ("cimage-key-rekor-valid/signature-1",),
        keys=("cimage-key-rekor-valid/cosign2.pub",),
        signer="cosign2",
    ),
    Case(
        "key-rekor-valid-wrong-key",
        "rekor",
        "cimage-key-rekor-valid/manifest.json",
        ("cimage-key-rekor-valid/signature-1",),
        keys=("cimage-key-rekor-valid/cosign.pub",),
        reason="no trusted key verifies the signature",
    ),
    Case(
        "key-valid-without-rekor-entry",
        "rekor",
        KEY_MANIFEST,
        ("cimage-key-valid/signature-1",),
        keys=(COSIGN,),
        reason="the signature has no Rekor entry (dev.sigstore.cosign/bundle)",
    ),
    Case(
        "fulcio-rekor-valid",
        "rekor",
        "cimage-fulcio-rekor-valid/manifest.json",
        ("cimage-fulcio-rekor-valid/signature-1",),
        identity=(GITHUB, "mitr@redhat.com"),
        signer=f"mitr@redhat.com ({GITHUB})",
    ),
    Case(
        "bundle-attestation",
        "rekor",
        EMPTY_MANIFEST,
        bundle=BUNDLE,
        identity=(GITHUB, "cody@soyland.com"),
        signer=f"cody@soyland.com ({GITHUB})",
    ),
    Case(
        "bundle-attestation-on-another-image",
        "rekor",
        KEY_MANIFEST,
        bundle=BUNDLE,
        identity=(GITHUB, "cody@soyland.com"),
        reason=f"no subject of the statement is {KEY_DIGEST}",
    ),
]


class Live(t.NamedTuple):
    platforms: dict[str, Platform]
    tokens: dict[str, str]


def _setup(platform: Platform) -> None:
    seed.seed_minimal(platform)
    with platform.batch():
        platform.create_user(OWNER.username, OWNER.password)
        platform.add_member(GROUP, OWNER.username, "owner")


def _push(upstream: Registry, case: Case) -> str:
    """The case's manifest by its exact bytes, and its signatures as cosign names them;
    the manifest's digest."""
    base, v2 = upstream.url, upstream.storage_dir / "docker" / "registry" / "v2"
    manifest = (VECTORS / case.manifest).read_bytes()
    document = json.loads(manifest)
    if case.manifest == EMPTY_MANIFEST:
        # go-containerregistry's empty.Image: its config ships too.
        artifacts.push_blob(base, case.image, (VECTORS / EMPTY_CONFIG).read_bytes())
        digest = artifacts.push_manifest(
            base, case.image, case.tag or "v1", manifest, document["mediaType"]
        )
    else:
        digest = artifacts.push_vector_manifest(base, v2, case.image, case.tag or "v1", manifest)
    if case.signatures:
        layers, types = [], []
        for signature in case.signatures:
            folder, name = signature.split("/")
            derived = VECTORS / folder / "derived"
            descriptor = json.loads((derived / f"{name}.layer-descriptor.json").read_text())
            payload = (derived / f"{name}.payload").read_bytes()
            assert artifacts.digest_of(payload) == descriptor["digest"]
            layers.append((payload, descriptor["annotations"]))
            types.append(descriptor["mediaType"])
        artifacts.push_signature_tag(base, case.image, digest, layers, media_types=types)
    if case.bundle:
        artifacts.push_referrers(
            base,
            case.image,
            {"mediaType": document["mediaType"], "digest": digest, "size": len(manifest)},
            [(artifacts.BUNDLE, artifacts.BUNDLE, (VECTORS / case.bundle).read_bytes())],
        )
    return digest


def _policy(platform: Platform, token: str, cases: t.Iterable[Case]) -> None:
    """``enforce``, trusting for each case's image exactly the case's signer."""
    keys, identities = [], []
    for case in cases:
        for key in case.keys:
            name = Path(key).stem
            keys.append({"name": name, "pem": (VECTORS / key).read_text(), "images": case.image})
        if case.identity:
            issuer, subject = case.identity
            identities.append({"issuer": issuer, "subject": subject, "images": case.image})
    answer = requests.put(
        f"{platform.url}/api/v4/groups/{GROUP}/dependency_proxy/signature_policy",
        json={"mode": "enforce", "keys": keys, "identities": identities},
        headers={"PRIVATE-TOKEN": token},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["mode"], answer.json()["default"]) == ("enforce", False)


@pytest.fixture(scope="module")
def live(
    module_processes: ProcessFactory,
    module_platform_factory: PlatformFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Live:
    workdir = tmp_path_factory.mktemp("signature-vectors")
    upstream = Registry(module_processes, workdir / "upstream", name="vectors-upstream").start()
    digests = {case.name: _push(upstream, case) for case in CASES}
    assert digests["key-valid"] == KEY_DIGEST and digests["key-rekor-valid"] == REKOR_DIGEST
    assert digests["bundle-attestation"] == EMPTY_DIGEST
    assert digests["key-modified-manifest"] == MODIFIED_DIGEST

    roots = workdir / "plain-roots.pem"
    roots.write_bytes(
        (VECTORS / "cimage-pki-valid" / "pki_root_crts.pem").read_bytes()
        + (VECTORS / "cimage-fulcio-rekor-valid" / "fulcio_v1.crt.pem").read_bytes()
    )
    settings = {
        "plain": {
            "DEPENDENCY_PROXY_SIGNATURE_ROOTS": str(roots),
            "DEPENDENCY_PROXY_SIGNATURE_INTERMEDIATES": str(
                VECTORS / "cimage-pki-valid" / "pki_intermediate_crts.pem"
            ),
        },
        "rekor": {
            "DEPENDENCY_PROXY_SIGNATURE_TRUSTED_ROOT": str(
                VECTORS / "cosign-bundle-attestation" / "trusted_root_pgi.json"
            ),
            "DEPENDENCY_PROXY_SIGNATURE_ROOTS": str(
                VECTORS / "cimage-fulcio-rekor-valid" / "fulcio_v1.crt.pem"
            ),
            "DEPENDENCY_PROXY_SIGNATURE_REKOR_KEYS": str(
                VECTORS / "cimage-key-rekor-valid" / "rekor.pub"
            ),
        },
    }
    platforms, tokens = {}, {}
    for kind, env in settings.items():
        platform = module_platform_factory(
            upstream.url, name=f"vectors-{kind}", setup=_setup, extra_env=env
        )
        created = platform.flask("token", "create", OWNER.username, "--scopes", "api").stdout
        tokens[kind] = created.strip().splitlines()[-1]
        _policy(platform, tokens[kind], [c for c in CASES if c.platform == kind])
        platforms[kind] = platform
    return Live(platforms, tokens)


def _manifest(platform: Platform, image: str, reference: str) -> requests.Response:
    headers = platform.bearer(USER.username, USER.password, GROUP, image)
    headers["Accept"] = images.MANIFEST_ACCEPT
    url = f"{platform.url}/v2/{platform.repository(GROUP, image)}/manifests/{reference}"
    return requests.get(url, headers=headers, timeout=60)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_vector_gives_its_expected_result_through_the_proxy(live: Live, case: Case) -> None:
    platform = live.platforms[case.platform]
    manifest = (VECTORS / case.manifest).read_bytes()
    digest = artifacts.digest_of(manifest)
    references = [digest] if case.tag is None else [case.tag, digest]
    for reference in references:
        answer = _manifest(platform, case.image, reference)
        if case.signer is not None:
            assert answer.status_code == 200, answer.text
            assert answer.content == manifest
            assert answer.headers["Docker-Content-Digest"] == digest
            assert answer.headers[HEADER] == "verified"
            assert answer.headers[f"{HEADER}-Detail"] == case.signer
        else:
            assert answer.status_code == 403, answer.text
            error = answer.json()["errors"][0]
            assert error["code"] == "DENIED"
            assert error["message"].startswith(
                f"the group's signature policy refuses {case.image}@{digest}:"
                f" invalid ({case.reason}"
            )
            assert error["detail"] == {"digest": digest, "signature": "invalid"}

    listed = requests.get(
        f"{platform.url}/api/v4/groups/{GROUP}/dependency_proxy/manifests",
        headers={"PRIVATE-TOKEN": live.tokens[case.platform]},
        params={"per_page": "100", "search": case.image},
        timeout=30,
    )
    assert listed.status_code == 200, listed.text
    states = [
        m["signature"] for m in listed.json() if (m["image"], m["digest"]) == (case.image, digest)
    ]
    assert states, listed.json()
    for state in states:
        if case.signer is not None:
            assert state == {"state": "verified", "signer": case.signer, "reason": None}
        else:
            assert state["state"] == "invalid" and state["reason"].startswith(case.reason)
