"""Groups that go away and groups renamed: the path the extension records for each group
id, ``forget_group`` and ``confirm_group``.

The example platform in process on SQLite, which gives a deleted group's id to the next
group created (``INTEGER PRIMARY KEY`` without ``AUTOINCREMENT``): the case the records
are for. A host that deletes a group without telling the extension gets the new group
refused, never served the old one's settings, cache or upstream credentials.
"""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from examples.platform import services
from examples.platform.extensions import proxy
from examples.platform.models import Group, Membership, db
from flask_dependency_proxy import state
from flask_dependency_proxy.models.tables import (
    CachedBlob,
    CachedManifest,
    GroupPath,
    GroupSettings,
    GroupUpstreamRow,
    Status,
    UsageDay,
)
from tests import lifecycle_fixtures as lf
from tests.platform_fixtures import dispose, login, make_app

PASSWORD = "correct horse battery staple"
IMAGE = "alpine"


@pytest.fixture
def platform_app(tmp_path: Path) -> t.Iterator[Flask]:
    """The platform on SQLite; ``root`` administers everything, ``dev`` belongs to
    ``old``, a group with its proxy on, a cached image, settings, a size limit, an
    upstream credential and a day of usage."""
    app = make_app(tmp_path)
    with app.app_context():
        services.create_user("root", f"{PASSWORD} root", is_admin=True)
        services.create_user("dev", f"{PASSWORD} dev")
        old = services.create_group("old", private=True).id
        services.add_member("old", "dev", "developer")
        db.session.remove()
    enabled = app.test_cli_runner().invoke(args=["dependency-proxy", "enable", "old"])
    assert enabled.exit_code == 0, enabled.output
    with app.app_context():
        admin = state(None).group_admin
        admin.update_settings(old, cleanup_enabled=True, cleanup_days=7)
        admin.set_limit(old, 10_000_000)
        admin.set_credentials(old, "default", "old-user", "old-secret-password")
        lf.add_manifest(old, IMAGE, "latest")
        lf.add_blob(old, b"old layer")
        db.session.add(UsageDay(group_id=old, day=lf.utcnow().date(), pulls_cached=3))
        db.session.commit()
        db.session.remove()
    yield app
    dispose(app)


def _group_id(app: Flask, path: str) -> int:
    with app.app_context():
        group_id = services.require_group(path).id
        db.session.remove()
        return group_id


def _delete_without_telling(app: Flask, path: str) -> None:
    """What a host that knows nothing of ``forget_group`` does."""
    with app.app_context():
        group = services.require_group(path)
        db.session.execute(sa.delete(Membership).where(Membership.group_id == group.id))
        db.session.delete(group)
        db.session.commit()
        db.session.remove()


def _create(app: Flask, path: str) -> int:
    with app.app_context():
        group_id = services.create_group(path, private=True).id
        services.add_member(path, "dev", "developer")
        db.session.remove()
        return group_id


def _pull(client: FlaskClient, group: str, user: str = "dev") -> t.Any:
    token = client.get(
        "/jwt/auth?service=dependency_proxy", auth=(user, f"{PASSWORD} {user}")
    ).get_json()["token"]
    return client.get(
        f"/v2/{group}/dependency_proxy/containers/{IMAGE}/manifests/latest",
        headers={"Authorization": f"Bearer {token}"},
    )


def _rows(app: Flask, table: t.Any, group_id: int) -> list[t.Any]:
    with app.app_context():
        found = list(db.session.scalars(sa.select(table).where(table.group_id == group_id)))
        db.session.remove()
        return found


def test_a_reused_id_is_refused_until_the_host_forgets_the_old_group(
    platform_app: Flask,
) -> None:
    client = platform_app.test_client()
    assert _pull(client, "old").status_code == 200
    old_id = _group_id(platform_app, "old")

    _delete_without_telling(platform_app, "old")
    assert _create(platform_app, "new") == old_id  # SQLite gave the id again

    refused = _pull(client, "new")
    assert refused.status_code == 403, refused.get_data(as_text=True)
    error = refused.get_json()["errors"][0]
    assert error["code"] == "DENIED"
    for part in ("'old'", "'new'", f"confirm_group({old_id})", f"forget_group({old_id})"):
        assert part in error["message"], error["message"]

    # The pages and the API refuse it too, saying the same.
    login(client, "root", f"{PASSWORD} root")
    page = client.get("/groups/new/-/dependency_proxy")
    assert page.status_code == 409
    text = page.get_data(as_text=True)
    assert f"forget_group({old_id})" in text and f"confirm_group({old_id})" in text
    assert "old-user" not in text
    api = client.get("/api/v4/groups/new/dependency_proxy/settings")
    assert api.status_code == 409
    assert f"forget_group({old_id})" in api.get_json()["message"]
    assert "'old'" in api.get_json()["message"]

    result = platform_app.test_cli_runner().invoke(
        args=["dependency-proxy", "forget-group", str(old_id)]
    )
    assert result.exit_code == 0, result.output
    assert str(old_id) in result.output

    for table in (GroupSettings, GroupUpstreamRow, UsageDay):
        assert _rows(platform_app, table, old_id) == []
    assert [row.path for row in _rows(platform_app, GroupPath, old_id)] == []
    for table in (CachedManifest, CachedBlob):
        rows = _rows(platform_app, table, old_id)
        assert rows and all(row.status == Status.PENDING_DESTRUCTION for row in rows)

    # The new group starts from the defaults: its proxy is off, nothing inherited.
    fresh = _pull(client, "new")
    assert fresh.status_code == 404, fresh.get_data(as_text=True)
    assert fresh.get_json()["errors"][0]["code"] == "NAME_UNKNOWN"
    settings = client.get("/api/v4/groups/new/dependency_proxy/settings").get_json()
    assert settings["enabled"] is False
    assert settings["quota"]["limit_bytes"] is None
    assert settings["cleanup_policy"]["enabled"] is False
    assert [row.path for row in _rows(platform_app, GroupPath, old_id)] == ["new"]

    # Cleanup deletes the old rows (and the blob file no group references).
    with platform_app.app_context():
        state(None).lifecycle.cleanup()
        db.session.remove()
    assert _rows(platform_app, CachedManifest, old_id) == []
    assert _rows(platform_app, CachedBlob, old_id) == []


def test_a_renamed_group_keeps_its_cache_once_the_host_confirms(platform_app: Flask) -> None:
    client = platform_app.test_client()
    assert _pull(client, "old").status_code == 200
    group_id = _group_id(platform_app, "old")
    with platform_app.app_context():
        db.session.get(Group, group_id).full_path = "renamed"
        db.session.commit()
        db.session.remove()

    refused = _pull(client, "renamed")
    assert refused.status_code == 403
    assert refused.get_json()["errors"][0]["code"] == "DENIED"

    with platform_app.app_context():
        proxy.confirm_group(group_id)
        db.session.remove()
    served = _pull(client, "renamed")
    assert served.status_code == 200, served.get_data(as_text=True)
    assert [row.path for row in _rows(platform_app, GroupPath, group_id)] == ["renamed"]
    assert _rows(platform_app, GroupSettings, group_id)[0].size_limit_bytes == 10_000_000

    # The old path names nothing now; a group created there later is a new group.
    assert _pull(client, "old").status_code == 404


def test_confirm_group_from_the_command_line(platform_app: Flask) -> None:
    group_id = _group_id(platform_app, "old")
    with platform_app.app_context():
        db.session.get(Group, group_id).full_path = "renamed"
        db.session.commit()
        db.session.remove()
    runner = platform_app.test_cli_runner()
    # A command naming the group by its new path says what to do.
    refused = runner.invoke(args=["dependency-proxy", "stats", "renamed"])
    assert refused.exit_code != 0
    assert f"confirm-group {group_id}" in refused.output
    result = runner.invoke(args=["dependency-proxy", "confirm-group", str(group_id)])
    assert result.exit_code == 0, result.output
    assert "renamed" in result.output
    assert runner.invoke(args=["dependency-proxy", "stats", "renamed"]).exit_code == 0
    unknown = runner.invoke(args=["dependency-proxy", "confirm-group", "999999"])
    assert unknown.exit_code != 0
    assert "999999" in unknown.output


def test_a_host_that_forgets_on_delete_gets_a_fresh_group_on_the_reused_id(
    platform_app: Flask,
) -> None:
    client = platform_app.test_client()
    assert _pull(client, "old").status_code == 200
    old_id = _group_id(platform_app, "old")
    with platform_app.app_context():
        services.delete_group("old")  # the platform calls proxy.forget_group
        db.session.remove()
    assert _create(platform_app, "new") == old_id
    fresh = _pull(client, "new")
    assert fresh.status_code == 404
    assert fresh.get_json()["errors"][0]["code"] == "NAME_UNKNOWN"
    assert _rows(platform_app, GroupSettings, old_id) == []
    assert _rows(platform_app, GroupUpstreamRow, old_id) == []


def test_forget_group_of_an_unknown_id_is_harmless(platform_app: Flask) -> None:
    result = platform_app.test_cli_runner().invoke(
        args=["dependency-proxy", "forget-group", "424242"]
    )
    assert result.exit_code == 0, result.output
    bad = platform_app.test_cli_runner().invoke(args=["dependency-proxy", "forget-group", "x"])
    assert bad.exit_code == 2
