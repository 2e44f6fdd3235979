"""The accounts and groups every live platform in the e2e tests is set up with."""

from __future__ import annotations

import dataclasses
import typing as t

if t.TYPE_CHECKING:
    from .platform import Platform


@dataclasses.dataclass(frozen=True)
class Account:
    username: str
    password: str


#: Platform administrator; a member of no group.
ROOT = Account("root", "root-password-0001")
#: Developer in ``acme`` (and, through it, ``acme/tools``) and in ``initech``.
ALICE = Account("alice", "alice-password-0001")
#: Developer in ``globex``.
BOB = Account("bob", "bob-password-0001")
#: Guest in ``acme``: the lowest role that may pull.
GUEST = Account("gus", "gus-password-0001")
#: Member of no group.
CAROL = Account("carol", "carol-password-0001")

#: Private group with the proxy on.
ACME = "acme"
#: A subgroup of ``acme`` with its own proxy on.
ACME_TOOLS = "acme/tools"
#: Private group with the proxy on; alice is not a member.
GLOBEX = "globex"
#: Group whose proxy is off; alice is a member.
INITECH = "initech"


def seed_full(platform: Platform) -> None:
    """Everything above (used by the session-wide platform)."""
    with platform.batch():
        platform.init_db()
        platform.create_user(ROOT.username, ROOT.password, admin=True)
        for account in (ALICE, BOB, GUEST, CAROL):
            platform.create_user(account.username, account.password)
        for group in (ACME, ACME_TOOLS, GLOBEX, INITECH):
            platform.create_group(group, private=True)
        platform.add_member(ACME, ALICE.username, "developer")
        platform.add_member(ACME, GUEST.username, "guest")
        platform.add_member(GLOBEX, BOB.username, "developer")
        platform.add_member(INITECH, ALICE.username, "developer")
        for group in (ACME, ACME_TOOLS, GLOBEX):
            platform.enable_proxy(group)


def seed_minimal(platform: Platform) -> None:
    """Alice in ``acme`` with the proxy on: enough for one-scenario platforms."""
    with platform.batch():
        platform.init_db()
        platform.create_user(ALICE.username, ALICE.password)
        platform.create_group(ACME, private=True)
        platform.add_member(ACME, ALICE.username, "developer")
        platform.enable_proxy(ACME)
