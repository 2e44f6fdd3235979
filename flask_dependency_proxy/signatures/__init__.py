"""Who signed an image: cosign's legacy ``.sig`` signatures (:mod:`.simplesigning`) and
Sigstore bundles v0.3 found through referrers (:mod:`.bundles`), checked against the
signers a policy trusts (:mod:`.trust`): public keys, and keyless identities whose
Fulcio certificate chains to a configured root (:mod:`.certificates`) at the time a
Rekor entry proves (:mod:`.rekor`). :mod:`.verifier` turns it all into one
:class:`~.verdict.Verdict` per digest, which the cache keeps per policy version.

Offline by construction: nothing here opens a socket; every key, root and log key comes
from the policy. Built on ``cryptography``; imports nothing else of the package.
"""

from .bundles import bundle_layer_descriptor
from .simplesigning import (
    SignatureLayer,
    signature_layer,
    signature_layer_descriptors,
    signature_tag,
)
from .trust import IdentitySigner, KeySigner, TrustPolicy, TrustRoot
from .verdict import Status, Verdict
from .verifier import SignatureVerifier

__all__ = [
    "IdentitySigner",
    "KeySigner",
    "SignatureLayer",
    "SignatureVerifier",
    "Status",
    "TrustPolicy",
    "TrustRoot",
    "Verdict",
    "bundle_layer_descriptor",
    "signature_layer",
    "signature_layer_descriptors",
    "signature_tag",
]
