"""Signature policies at the cache, with real cosign vectors in the suite's real upstream
and skopeo and a plain HTTP client pulling through the live platform.

Upstream holds, under the names cosign gives them:
- ``e2e/bundled:v1``: go-containerregistry's ``empty.Image`` by its exact bytes, with the
  cosign v3 attestation bundle attached as an OCI referrer (keyless, public good).
- ``e2e/keysigned:v1``: containers/image's key+Rekor vector manifest by its exact bytes
  (its layers are not in the vector: only the manifest is pulled), with its
  ``sha256-<hex>.sig`` tag.
- ``e2e/unsigned:1``, and ``e2e/wrongsig:1`` whose ``.sig`` holds a real signature of
  another digest.
The instance trusts the vectors' public-good ``trusted_root.json``.
"""

from __future__ import annotations

import base64
import json
import time
import typing as t
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.support import artifacts, checks, images, seed
from tests.support.clients import Skopeo
from tests.support.containerd import Containerd
from tests.support.dockerd import Dockerd
from tests.support.platform import Platform, PlatformFactory
from tests.support.processes import ProcessFactory
from tests.support.registry import Registry

pytestmark = pytest.mark.e2e
#: The subject is the policy at the pull, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]

VECTORS = Path(__file__).parent / "data" / "cosign"
GROUP = seed.ACME
USER = seed.ALICE
OWNER = seed.Account("olivia", "olivia-password-0001")
HEADER = "X-Dependency-Proxy-Signature"
REFRESH = 0.3
IDENTITY = {"issuer": "https://github.com/login/oauth", "subject": "cody@soyland.com"}


class Signed(t.NamedTuple):
    platform: Platform
    upstream: Registry
    token: str
    bundled: str
    keysigned: str
    unsigned: str
    wrongsig: str


def _setup(platform: Platform) -> None:
    seed.seed_minimal(platform)
    with platform.batch():
        platform.create_user(OWNER.username, OWNER.password)
        platform.add_member(GROUP, OWNER.username, "owner")


@pytest.fixture(scope="module")
def signed(
    module_processes: ProcessFactory,
    module_platform_factory: PlatformFactory,
    tmp_path_factory: pytest.TempPathFactory,
) -> Signed:
    workdir = tmp_path_factory.mktemp("signatures")
    upstream = Registry(module_processes, workdir / "upstream", name="signed-upstream").start()
    platform = module_platform_factory(
        upstream.url,
        name="signatures",
        setup=_setup,
        extra_env={
            # Policies reach the other workers within this time (pulls read them from memory).
            "DEPENDENCY_PROXY_BLOCK_REFRESH_SECONDS": str(REFRESH),
            "DEPENDENCY_PROXY_SIGNATURE_TRUSTED_ROOT": str(
                VECTORS / "cosign-bundle-attestation" / "trusted_root_pgi.json"
            ),
        },
    )
    token = platform.flask("token", "create", OWNER.username, "--scopes", "api").stdout
    base, v2 = upstream.url, upstream.storage_dir / "docker" / "registry" / "v2"

    # The keyless bundle on the empty image: both by their exact bytes.
    empty = VECTORS / "cosign-bundle-attestation" / "derived"
    artifacts.push_blob(base, "e2e/bundled", (empty / "empty-image-config.json").read_bytes())
    manifest = (empty / "empty-image-manifest.json").read_bytes()
    bundled = artifacts.push_manifest(base, "e2e/bundled", "v1", manifest, images.DOCKER_MANIFEST)
    bundle = (VECTORS / "cosign-bundle-attestation" / "oci-attestation.sigstore.json").read_bytes()
    artifacts.push_referrers(
        base,
        "e2e/bundled",
        {"mediaType": images.DOCKER_MANIFEST, "digest": bundled, "size": len(manifest)},
        [(artifacts.BUNDLE, artifacts.BUNDLE, bundle)],
    )

    # The key+Rekor vector and its .sig tag.
    vector = VECTORS / "cimage-key-rekor-valid"
    keysigned = artifacts.push_vector_manifest(
        base, v2, "e2e/keysigned", "v1", (vector / "manifest.json").read_bytes()
    )
    layer = (
        (vector / "derived" / "signature-1.payload").read_bytes(),
        json.loads((vector / "derived" / "signature-1.layer-descriptor.json").read_text())[
            "annotations"
        ],
    )
    artifacts.push_signature_tag(base, "e2e/keysigned", keysigned, [layer])

    unsigned = images.push(
        images.build_image("signatures-unsigned", layer_sizes=(1024,)),
        upstream,
        "e2e/unsigned",
        "1",
        workdir=workdir,
    ).digest
    wrongsig = images.push(
        images.build_image("signatures-wrong", layer_sizes=(1024,)),
        upstream,
        "e2e/wrongsig",
        "1",
        workdir=workdir,
    ).digest
    artifacts.push_signature_tag(base, "e2e/wrongsig", wrongsig, [layer])
    return Signed(
        platform, upstream, token.strip().splitlines()[-1], bundled, keysigned, unsigned, wrongsig
    )


def _policy(live: Signed, mode: str, *, extra_key: bool = False) -> None:
    keys = [
        {
            "name": "cosign2",
            "pem": (VECTORS / "cimage-key-rekor-valid" / "cosign2.pub").read_text(),
            "images": "e2e/*",
        }
    ]
    if extra_key:
        keys.append({"pem": (VECTORS / "cimage-key-valid" / "cosign.pub").read_text()})
    answer = requests.put(
        f"{live.platform.url}/api/v4/groups/{GROUP}/dependency_proxy/signature_policy",
        json={"mode": mode, "keys": keys, "identities": [IDENTITY]},
        headers={"PRIVATE-TOKEN": live.token},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    assert (answer.json()["mode"], answer.json()["default"]) == (mode, False)
    time.sleep(REFRESH + 0.1)


def _manifest(live: Signed, image: str, reference: str) -> requests.Response:
    headers = live.platform.bearer(USER.username, USER.password, GROUP, image)
    headers["Accept"] = images.MANIFEST_ACCEPT
    url = f"{live.platform.url}/v2/{live.platform.repository(GROUP, image)}/manifests/{reference}"
    return requests.get(url, headers=headers, timeout=60)


@pytest.fixture
def alice(signed: Signed, tmp_path: Path) -> Skopeo:
    skopeo = Skopeo(tmp_path / "skopeo")
    checks.ok(skopeo.login(signed.platform.host, USER.username, USER.password))
    return skopeo


def test_policy_api_rejects_bad_input(signed: Signed) -> None:
    url = f"{signed.platform.url}/api/v4/groups/{GROUP}/dependency_proxy/signature_policy"
    auth = {"PRIVATE-TOKEN": signed.token}
    shown = requests.get(url, headers=auth, timeout=30).json()
    assert (shown["mode"], shown["default"], shown["index_rule"]) == ("off", True, "index")
    for body in (
        {"mode": "block"},
        {"mode": "enforce"},
        {"mode": "off", "index_rule": "each"},
        {"mode": "warn", "keys": [{"pem": "not a key"}]},
        {"mode": "warn", "identities": [{"issuer": "x"}]},
    ):
        answer = requests.put(url, json=body, headers=auth, timeout=30)
        assert answer.status_code == 400, body
        assert "message" in answer.json()
    pull_only = signed.platform.bearer(USER.username, USER.password, GROUP, "e2e/unsigned")
    assert requests.put(url, json={"mode": "off"}, headers=pull_only, timeout=30).status_code in (
        401,
        403,
    )


def test_enforce_serves_signed_images_and_refuses_the_rest(signed: Signed, alice: Skopeo) -> None:
    _policy(signed, "enforce")
    result, target = alice.copy_to_dir(signed.platform.image(GROUP, "e2e/bundled", "v1"))
    checks.ok(result)
    empty = VECTORS / "cosign-bundle-attestation" / "derived" / "empty-image-manifest.json"
    assert (target / "manifest.json").read_bytes() == empty.read_bytes()

    refused, _ = alice.copy_to_dir(signed.platform.image(GROUP, "e2e/unsigned", "1"))
    message = checks.failed(refused)
    assert "signature policy" in message and "unsigned" in message

    keysigned = _manifest(signed, "e2e/keysigned", "v1")
    assert keysigned.status_code == 200, keysigned.text
    assert keysigned.headers["Docker-Content-Digest"] == signed.keysigned
    assert keysigned.headers[HEADER] == "verified"
    assert keysigned.headers[f"{HEADER}-Detail"] == "cosign2"
    # The .sig tag still pulls as a tag (a verifying client reads it through the cache).
    sig = _manifest(signed, "e2e/keysigned", signed.keysigned.replace(":", "-") + ".sig")
    assert sig.status_code == 200 and HEADER not in sig.headers

    wrong = _manifest(signed, "e2e/wrongsig", "1")
    assert wrong.status_code == 403
    error = wrong.json()["errors"][0]
    assert error["code"] == "DENIED" and "invalid" in error["message"]
    assert f"signs {signed.keysigned}, not {signed.wrongsig}" in error["message"]


def test_warn_serves_everything_and_marks_the_unsigned(signed: Signed, alice: Skopeo) -> None:
    _policy(signed, "warn")
    checks.ok(alice.copy_to_dir(signed.platform.image(GROUP, "e2e/unsigned", "1"))[0])
    unsigned = _manifest(signed, "e2e/unsigned", "1")
    assert unsigned.status_code == 200
    assert unsigned.headers[HEADER] == "unsigned"
    wrong = _manifest(signed, "e2e/wrongsig", signed.wrongsig)
    assert (wrong.status_code, wrong.headers[HEADER]) == (200, "invalid")
    bundled = _manifest(signed, "e2e/bundled", "v1")
    assert bundled.headers[HEADER] == "verified"
    assert (
        bundled.headers[f"{HEADER}-Detail"] == "cody@soyland.com (https://github.com/login/oauth)"
    )
    # The manifests API carries each cached manifest's state under the policy.
    listed = requests.get(
        f"{signed.platform.url}/api/v4/groups/{GROUP}/dependency_proxy/manifests",
        headers={"PRIVATE-TOKEN": signed.token},
        params={"per_page": 100},
        timeout=30,
    ).json()
    states = {(m["image"], m["tag"]): m["signature"] for m in listed}
    assert states[("e2e/unsigned", "1")]["state"] == "unsigned"
    assert states[("e2e/bundled", "v1")] == {
        "state": "verified",
        "signer": "cody@soyland.com (https://github.com/login/oauth)",
        "reason": None,
    }


def _sign(
    upstream: Registry, repository: str, digest: str, key: ec.EllipticCurvePrivateKey
) -> None:
    """A ``.sig`` tag with one simple-signing layer over ``digest``, as cosign lays it out.
    The vectors check the verifier against cosign's own signatures; this image must be
    one docker and containerd can unpack, so its signature is made here, in cosign's
    format (the payload's ECDSA P-256 SHA-256 signature, base64, in the annotation)."""
    payload = json.dumps(
        {
            "critical": {
                "identity": {"docker-reference": f"{upstream.host}/{repository}"},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature",
            },
            "optional": None,
        }
    ).encode()
    signature = key.sign(payload, ec.ECDSA(hashes.SHA256()))
    annotations = {"dev.cosignproject.cosign/signature": base64.b64encode(signature).decode()}
    artifacts.push_signature_tag(upstream.url, repository, digest, [(payload, annotations)])


def test_docker_and_containerd_pull_signed_images_and_are_refused_unsigned_ones(
    signed: Signed,
    module_processes: ProcessFactory,
    module_platform_factory: PlatformFactory,
    tmp_path: Path,
) -> None:
    """On an instance whose default policy enforces one key (given as a file), with no
    transparency log configured: docker and containerd pull the image it signed and get
    the reason for refusing the unsigned one; under ``warn`` both pull it, marked."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    (tmp_path / "release.pub").write_bytes(pem)
    pushed = images.push(
        images.build_image("signatures-clients", layer_sizes=(2048,)),
        signed.upstream,
        "e2e/clientsigned",
        "1",
        workdir=tmp_path,
    )
    _sign(signed.upstream, "e2e/clientsigned", pushed.digest, key)
    platform = module_platform_factory(
        signed.upstream.url,
        name="signatures-clients",
        setup=_setup,
        extra_env={
            "DEPENDENCY_PROXY_BLOCK_REFRESH_SECONDS": str(REFRESH),
            "DEPENDENCY_PROXY_SIGNATURE_MODE": "enforce",
            "DEPENDENCY_PROXY_SIGNATURE_SIGNERS": json.dumps(
                {"keys": [{"name": "release", "pem": str(tmp_path / "release.pub")}]}
            ),
        },
    )
    token = platform.flask("token", "create", OWNER.username, "--scopes", "api").stdout
    api = f"{platform.url}/api/v4/groups/{GROUP}/dependency_proxy/signature_policy"
    auth = {"PRIVATE-TOKEN": token.strip().splitlines()[-1]}
    shown = requests.get(api, headers=auth, timeout=30).json()
    assert (shown["mode"], shown["default"], shown["keys"][0]["name"]) == (
        "enforce",
        True,
        "release",
    )
    engine = Dockerd(module_processes, tmp_path / "dockerd").start()
    containerd = Containerd(module_processes, tmp_path / "containerd").start()
    try:
        checks.ok(engine.login(platform.host, USER.username, USER.password))
        good = platform.image(GROUP, "e2e/clientsigned", "1")
        bad = platform.image(GROUP, "e2e/unsigned", "1")

        checks.ok(engine.docker("pull", good))
        inspected = json.loads(checks.ok(engine.docker("image", "inspect", good)).stdout)
        assert inspected[0]["Id"] == pushed.config_digest
        refused = engine.docker("pull", bad)
        said = refused.stdout + refused.stderr
        assert refused.returncode != 0, said
        assert "signature policy refuses e2e/unsigned@sha256:" in said and "unsigned" in said

        checks.ok(containerd.pull(good, USER.username, USER.password))
        listed = checks.ok(containerd.ctr("images", "list", "--quiet")).stdout
        assert good in listed.split()
        ctr_refused = containerd.pull(bad, USER.username, USER.password)
        said = ctr_refused.stdout + ctr_refused.stderr
        assert ctr_refused.returncode != 0, said
        assert "403 the group's signature policy refuses e2e/unsigned@sha256:" in said, said

        answer = requests.put(
            api,
            json={"mode": "warn", "keys": [{"name": "release", "pem": pem.decode()}]},
            headers=auth,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        time.sleep(REFRESH + 0.1)  # the other workers' refresh
        checks.ok(engine.docker("pull", bad))
        checks.ok(containerd.pull(bad, USER.username, USER.password))
        live = signed._replace(platform=platform)
        marked = _manifest(live, "e2e/unsigned", "1")
        assert (marked.status_code, marked.headers[HEADER]) == (200, "unsigned")
        assert _manifest(live, "e2e/clientsigned", "1").headers[HEADER] == "verified"
    finally:
        engine.process.stop()
        containerd.process.stop()


def test_signed_cached_images_verify_and_pull_while_upstream_is_down(
    signed: Signed, alice: Skopeo
) -> None:
    _policy(signed, "enforce")
    checks.ok(alice.copy_to_dir(signed.platform.image(GROUP, "e2e/bundled", "v1"))[0])
    assert _manifest(signed, "e2e/keysigned", "v1").status_code == 200
    signed.upstream.stop()
    try:
        # A new trusted key is a new policy: the cached signatures are verified again.
        _policy(signed, "enforce", extra_key=True)
        result, target = alice.copy_to_dir(signed.platform.image(GROUP, "e2e/bundled", "v1"))
        checks.ok(result)
        keysigned = _manifest(signed, "e2e/keysigned", "v1")
        assert keysigned.status_code == 200, keysigned.text
        assert keysigned.headers[HEADER] == "verified"
        assert keysigned.headers["X-Dependency-Proxy-Stale"] == "true"
        # Its referrers were never cached: with no valid signature in hand it is not
        # served; the client is told to retry (a signature may wait upstream).
        wrong = _manifest(signed, "e2e/wrongsig", "1")
        assert (wrong.status_code, wrong.json()["errors"][0]["code"]) == (503, "UNAVAILABLE")
    finally:
        signed.upstream.start()
