"""Per-group upstream credentials at rest: encryption, key rotation, tampering, wrong
keys; and the group upstream records over a real SQLite database."""

from __future__ import annotations

import logging
import typing as t

import pytest
import sqlalchemy as sa
from cryptography.fernet import Fernet
from sqlalchemy import orm

from flask_dependency_proxy.models.tables import GroupUpstreamRow, metadata
from flask_dependency_proxy.models.upstreams import (
    GroupUpstream,
    GroupUpstreamRecords,
    UpstreamListError,
)
from flask_dependency_proxy.upstream.credentials import (
    CredentialCipher,
    CredentialError,
    derive_key,
    parse_keys,
)

SECRET = "hunter2-upstream-password"
INSTANCE = ("dockerhub", "ghcr", "quay")


# -- the cipher ----------------------------------------------------------------------------------


def test_a_value_round_trips_and_is_not_stored_in_clear() -> None:
    cipher = CredentialCipher.from_secrets(["app-secret"])

    token = cipher.encrypt(SECRET)

    assert SECRET.encode() not in token
    assert cipher.encrypt(SECRET) != token  # a fresh IV each time
    assert cipher.decrypt(token) == SECRET


def test_the_derived_key_depends_on_the_secret_key_and_is_a_fernet_key() -> None:
    key = derive_key("app-secret")

    assert key == derive_key(b"app-secret")
    assert key != derive_key("another-secret")
    Fernet(key)  # a valid key
    assert b"app-secret" not in key


def test_a_tampered_token_is_refused_without_quoting_it() -> None:
    cipher = CredentialCipher.from_secrets(["app-secret"])
    token = bytearray(cipher.encrypt(SECRET))
    token[40] = ord("A") if token[40] != ord("A") else ord("B")

    with pytest.raises(CredentialError) as caught:
        cipher.decrypt(bytes(token))

    assert bytes(token).decode() not in str(caught.value)
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_a_token_of_another_key_is_refused() -> None:
    token = CredentialCipher.from_secrets(["app-secret"]).encrypt(SECRET)

    with pytest.raises(CredentialError, match="no longer in DEPENDENCY_PROXY_CREDENTIAL_KEYS"):
        CredentialCipher.from_secrets(["rotated-secret"]).decrypt(token)
    with pytest.raises(CredentialError):
        CredentialCipher([Fernet.generate_key()]).decrypt(token)
    with pytest.raises(CredentialError):
        CredentialCipher.from_secrets(["app-secret"]).decrypt(b"not a token")


def test_rotation_reencrypts_with_the_newest_key() -> None:
    old_key, new_key = Fernet.generate_key(), Fernet.generate_key()
    token = CredentialCipher([old_key]).encrypt(SECRET)
    both = CredentialCipher([new_key, old_key])

    rotated = both.rotate(token)

    assert both.decrypt(token) == SECRET  # old tokens stay readable during the rotation
    assert CredentialCipher([new_key]).decrypt(rotated) == SECRET
    with pytest.raises(CredentialError):
        CredentialCipher([old_key]).decrypt(rotated)


def test_configured_keys_come_first_and_the_secret_key_stays_readable() -> None:
    """Moving from the derived key to keys of one's own is one rotation."""
    own = Fernet.generate_key().decode()
    derived_token = CredentialCipher.from_secrets(["app-secret"]).encrypt(SECRET)
    cipher = CredentialCipher.from_secrets(["app-secret"], [own])

    assert cipher.decrypt(derived_token) == SECRET
    assert CredentialCipher([own]).decrypt(cipher.encrypt(SECRET)) == SECRET
    assert CredentialCipher([own]).decrypt(cipher.rotate(derived_token)) == SECRET


def test_secret_key_fallbacks_decrypt_what_the_old_secret_key_encrypted() -> None:
    token = CredentialCipher.from_secrets(["old-secret"]).encrypt(SECRET)

    assert CredentialCipher.from_secrets(["new-secret", "old-secret"]).decrypt(token) == SECRET


def test_the_cipher_repr_shows_no_key() -> None:
    key = Fernet.generate_key()
    assert key.decode() not in repr(CredentialCipher([key]))


@pytest.mark.parametrize(
    "value",
    [
        "a, b",
        [],
        "",
        ["c2hvcnQ="],
        [123],
        "[not json",
    ],
)
def test_bad_configured_keys_are_refused_without_quoting_them(value: t.Any) -> None:
    with pytest.raises(ValueError, match="DEPENDENCY_PROXY_CREDENTIAL_KEYS") as caught:
        parse_keys("DEPENDENCY_PROXY_CREDENTIAL_KEYS", value)
    if isinstance(value, list) and value and isinstance(value[0], str):
        assert value[0] not in str(caught.value)


def test_configured_keys_are_read_from_a_list_json_or_commas() -> None:
    one, two = Fernet.generate_key().decode(), Fernet.generate_key().decode()

    assert parse_keys("K", [one, two]) == (one, two)
    assert parse_keys("K", f'["{one}", "{two}"]') == (one, two)
    assert parse_keys("K", f"{one}, {two}") == (one, two)


# -- the records over a real database ------------------------------------------------------------


@pytest.fixture
def session() -> t.Iterator[orm.Session]:
    engine = sa.create_engine("sqlite://")
    metadata.create_all(engine)
    with orm.Session(engine) as session:
        yield session
    engine.dispose()


@pytest.fixture
def records(session: orm.Session) -> GroupUpstreamRecords:
    return GroupUpstreamRecords(lambda: session, CredentialCipher.from_secrets(["app-secret"]))


def test_a_group_without_rows_uses_every_instance_upstream_in_order(
    records: GroupUpstreamRecords,
) -> None:
    assert records.ordered(7, INSTANCE) == [GroupUpstream(name, None, None) for name in INSTANCE]
    listing = records.listing(7, INSTANCE)
    assert not listing.custom_order
    assert [(i.name, i.position, i.credential_set) for i in listing.items] == [
        ("dockerhub", 1, False),
        ("ghcr", 2, False),
        ("quay", 3, False),
    ]


def test_owners_narrow_and_reorder_and_go_back_to_the_instance_order(
    records: GroupUpstreamRecords,
) -> None:
    records.set_order(7, ["quay", "dockerhub"], instance_names=INSTANCE)

    assert [u.name for u in records.ordered(7, INSTANCE)] == ["quay", "dockerhub"]
    assert [u.name for u in records.ordered(8, INSTANCE)] == list(INSTANCE)  # other groups
    listing = records.listing(7, INSTANCE)
    assert listing.custom_order
    assert [(i.name, i.position) for i in listing.items] == [
        ("quay", 1),
        ("dockerhub", 2),
        ("ghcr", None),
    ]
    # An upstream the instance no longer defines is skipped.
    assert [u.name for u in records.ordered(7, ("dockerhub", "ghcr"))] == ["dockerhub"]

    records.set_order(7, None, instance_names=INSTANCE)

    assert [u.name for u in records.ordered(7, INSTANCE)] == list(INSTANCE)
    assert not records.listing(7, INSTANCE).custom_order


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([], "at least one"),
        (["ghcr", "ghcr"], "twice"),
        (["ghcr", "evil.example"], "not an upstream of this instance: 'evil.example'"),
    ],
)
def test_an_order_the_instance_cannot_serve_is_refused(
    records: GroupUpstreamRecords, names: list[str], message: str
) -> None:
    with pytest.raises(UpstreamListError, match=message):
        records.set_order(7, names, instance_names=INSTANCE)
    assert not records.listing(7, INSTANCE).custom_order


def test_credentials_are_stored_encrypted_and_given_only_to_ordered(
    records: GroupUpstreamRecords, session: orm.Session
) -> None:
    records.set_credentials(7, "ghcr", "robot", SECRET, instance_names=INSTANCE)

    assert records.ordered(7, INSTANCE) == [
        GroupUpstream("dockerhub", None, None),
        GroupUpstream("ghcr", "robot", SECRET),
        GroupUpstream("quay", None, None),
    ]
    assert SECRET not in repr(records.ordered(7, INSTANCE))
    stored = session.execute(sa.select(GroupUpstreamRow)).scalar_one()
    assert stored.password_encrypted is not None
    assert SECRET.encode() not in stored.password_encrypted
    assert b"robot" not in (stored.username_encrypted or b"")
    # Setting a credential leaves the default order in place.
    listing = records.listing(7, INSTANCE)
    assert not listing.custom_order
    assert [(i.name, i.credential_set) for i in listing.items][1] == ("ghcr", True)
    assert SECRET not in repr(listing)


def test_narrowing_an_upstream_out_and_back_in_keeps_its_credential(
    records: GroupUpstreamRecords,
) -> None:
    records.set_credentials(7, "ghcr", "robot", SECRET, instance_names=INSTANCE)
    records.set_order(7, ["dockerhub"], instance_names=INSTANCE)
    assert [u.name for u in records.ordered(7, INSTANCE)] == ["dockerhub"]

    records.set_order(7, ["ghcr", "dockerhub"], instance_names=INSTANCE)

    assert records.ordered(7, INSTANCE)[0] == GroupUpstream("ghcr", "robot", SECRET)
    assert records.clear_credentials(7, "ghcr")
    assert records.ordered(7, INSTANCE)[0] == GroupUpstream("ghcr", None, None)
    assert not records.clear_credentials(7, "ghcr")
    assert [u.name for u in records.ordered(7, INSTANCE)] == ["ghcr", "dockerhub"]


@pytest.mark.parametrize(
    ("name", "username", "password", "message"),
    [
        ("nope", "robot", "pw", "not an upstream"),
        ("ghcr", "", "pw", "username must be 1 to 255"),
        ("ghcr", "a:b", "pw", "must not contain ':'"),
        ("ghcr", "a\nb", "pw", "control characters"),
        ("ghcr", "robot", "", "password must be 1 to 8192"),
        ("ghcr", "robot", "x" * 8193, "password must be 1 to 8192"),
        ("ghcr", "robot", "a\x00b", "NUL"),
    ],
)
def test_bad_credentials_are_refused_without_quoting_them(
    records: GroupUpstreamRecords, name: str, username: str, password: str, message: str
) -> None:
    with pytest.raises(UpstreamListError, match=message) as caught:
        records.set_credentials(7, name, username, password, instance_names=INSTANCE)
    if password:
        assert password not in str(caught.value)
    assert not any(i.credential_set for i in records.listing(7, INSTANCE).items)


def test_an_unreadable_credential_is_listed_and_not_used(
    session: orm.Session, caplog: pytest.LogCaptureFixture
) -> None:
    GroupUpstreamRecords(
        lambda: session, CredentialCipher.from_secrets(["old-secret"])
    ).set_credentials(7, "ghcr", "robot", SECRET, instance_names=INSTANCE)
    records = GroupUpstreamRecords(lambda: session, CredentialCipher.from_secrets(["new-secret"]))

    with caplog.at_level(logging.WARNING):
        ordered = records.ordered(7, INSTANCE)

    assert ordered[1] == GroupUpstream("ghcr", None, None)
    assert "group 7: the credential for upstream 'ghcr' cannot be decrypted" in caplog.text
    assert SECRET not in caplog.text
    item = records.listing(7, INSTANCE).items[1]
    assert item.credential_set and item.credential_unreadable


def test_rotate_all_reencrypts_every_row_and_reports_unreadable_ones(
    session: orm.Session,
) -> None:
    old_key, new_key = Fernet.generate_key(), Fernet.generate_key()
    old = GroupUpstreamRecords(lambda: session, CredentialCipher([old_key]))
    for group in range(1, 6):
        old.set_credentials(group, "ghcr", f"robot{group}", SECRET, instance_names=INSTANCE)
    GroupUpstreamRecords(
        lambda: session, CredentialCipher([Fernet.generate_key()])
    ).set_credentials(9, "quay", "lost", SECRET, instance_names=INSTANCE)
    both = GroupUpstreamRecords(lambda: session, CredentialCipher([new_key, old_key]))

    result = both.rotate_all(batch_size=2)

    assert result.rotated == 5
    assert result.unreadable == ((9, "quay"),)
    new_only = GroupUpstreamRecords(lambda: session, CredentialCipher([new_key]))
    for group in range(1, 6):
        assert new_only.ordered(group, INSTANCE)[1] == GroupUpstream(
            "ghcr", f"robot{group}", SECRET
        )
