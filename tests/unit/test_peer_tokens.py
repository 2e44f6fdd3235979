"""Peer tokens: what one host of a fleet signs to read a fetch another host runs.

A token names the digest, the offset, the reading host and the host asked, lives a few
seconds, and is signed with ``SECRET_KEY`` while every key of the rotation verifies it.
"""

from __future__ import annotations

import pytest

from flask_dependency_proxy.fetch.peer_tokens import (
    PEER_CLOCK_SKEW_SECONDS,
    PEER_TOKEN_SECONDS,
    InvalidPeerToken,
    PeerTokens,
    comes_from,
    parse_offset,
)

A = "http://10.0.0.1:8000"
B = "http://10.0.0.2:8000"
DIGEST = "sha256:" + "a" * 64
OTHER = "sha256:" + "b" * 64


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def test_a_token_names_the_digest_offset_and_both_hosts() -> None:
    token = PeerTokens(["fleet"], B).issue(A, DIGEST, 4096)

    granted = PeerTokens(["fleet"], A).verify(token, DIGEST)

    assert (granted.digest, granted.offset, granted.requester, granted.holder) == (
        DIGEST,
        4096,
        B,
        A,
    )


def test_a_token_is_good_for_its_digest_at_the_host_asked_only() -> None:
    token = PeerTokens(["fleet"], B).issue(A, DIGEST, 0)

    with pytest.raises(InvalidPeerToken, match="digest"):
        PeerTokens(["fleet"], A).verify(token, OTHER)
    # Replayed at a third host of the fleet (or at the requester itself).
    with pytest.raises(InvalidPeerToken, match="another host"):
        PeerTokens(["fleet"], "http://10.0.0.3:8000").verify(token, DIGEST)
    with pytest.raises(InvalidPeerToken, match="another host"):
        PeerTokens(["fleet"], B).verify(token, DIGEST)


def test_a_token_lives_seconds_and_allows_a_small_clock_skew_either_way() -> None:
    issuer_clock, holder_clock = Clock(), Clock()
    token = PeerTokens(["fleet"], B, clock=issuer_clock).issue(A, DIGEST, 0)
    holder = PeerTokens(["fleet"], A, clock=holder_clock)

    # The holder's clock behind the issuer's, within the skew.
    holder_clock.now = issuer_clock.now - PEER_CLOCK_SKEW_SECONDS + 0.5
    assert holder.verify(token, DIGEST).digest == DIGEST
    holder_clock.now = issuer_clock.now + PEER_TOKEN_SECONDS + PEER_CLOCK_SKEW_SECONDS - 0.5
    assert holder.verify(token, DIGEST).digest == DIGEST

    holder_clock.now = issuer_clock.now + PEER_TOKEN_SECONDS + PEER_CLOCK_SKEW_SECONDS + 0.5
    with pytest.raises(InvalidPeerToken, match="expired"):
        holder.verify(token, DIGEST)
    holder_clock.now = issuer_clock.now - PEER_CLOCK_SKEW_SECONDS - 0.5
    with pytest.raises(InvalidPeerToken, match="future"):
        holder.verify(token, DIGEST)
    assert PEER_TOKEN_SECONDS + PEER_CLOCK_SKEW_SECONDS <= 10


def test_tokens_are_signed_with_secret_key_and_verified_with_every_key_of_a_rotation() -> None:
    """The fleet rotates from ``old`` to ``new`` one host at a time: every step of the
    rotation keeps each host's tokens good on the others."""
    before = PeerTokens(["old"], B)  # not rotated yet
    rotating = PeerTokens(["new", "old"], B)  # SECRET_KEY new, old as a fallback
    after = PeerTokens(["new"], B)  # fallback dropped

    # A host that already dropped the fallback takes a rotating host's tokens ...
    PeerTokens(["new"], A).verify(rotating.issue(A, DIGEST, 0), DIGEST)
    # ... a rotating host takes the tokens of hosts before and after the rotation ...
    PeerTokens(["new", "old"], A).verify(before.issue(A, DIGEST, 0), DIGEST)
    PeerTokens(["new", "old"], A).verify(after.issue(A, DIGEST, 0), DIGEST)
    # ... and a key nobody has any longer is refused.
    with pytest.raises(InvalidPeerToken, match="signature"):
        PeerTokens(["new"], A).verify(before.issue(A, DIGEST, 0), DIGEST)


@pytest.mark.parametrize(
    "token",
    ["", "not-a-token", "x" * 5000, PeerTokens(["fleet"], B).issue(A, DIGEST, 0)[:-3] + "AAA"],
)
def test_malformed_and_tampered_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidPeerToken):
        PeerTokens(["fleet"], A).verify(token, DIGEST)


def test_a_token_from_another_use_of_the_secret_key_is_refused() -> None:
    from flask_dependency_proxy.auth.tokens import TokenIssuer

    registry_token, _ = TokenIssuer(["fleet"], ttl_seconds=900).issue("user:1")

    with pytest.raises(InvalidPeerToken):
        PeerTokens(["fleet"], A).verify(registry_token, DIGEST)


@pytest.mark.parametrize(
    ("peer_url", "address", "expected"),
    [
        ("http://10.0.0.2:8000", "10.0.0.2", True),
        ("http://10.0.0.2:8000", "10.0.0.9", False),
        ("http://10.0.0.2:8000", "::ffff:10.0.0.2", True),
        ("http://[fd00::2]:8000", "fd00::2", True),
        ("http://[fd00::2]:8000", "fd00::3", False),
        ("http://localhost:8000", "127.0.0.1", True),
        ("http://localhost:8000", "127.0.0.2", False),
        ("http://10.0.0.2:8000", "", False),
        ("http://10.0.0.2:8000", "not an address", False),
        ("http://no-such-host.invalid:8000", "10.0.0.2", False),
    ],
)
def test_a_request_comes_from_the_host_its_peer_url_names(
    peer_url: str, address: str, expected: bool
) -> None:
    assert comes_from(peer_url, address) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0", 0),
        ("1048576", 1048576),
        ("²", None),
        ("١٢", None),
        ("１", None),
        ("-1", None),
        ("+1", None),
        (" 1", None),
        ("1e9", None),
        ("", None),
        ("9" * 19, None),
        (str(1 << 62), None),
        (str((1 << 62) - 1), (1 << 62) - 1),
    ],
)
def test_offsets_are_ascii_digits_only(text: str, expected: int | None) -> None:
    assert parse_offset(text) == expected
