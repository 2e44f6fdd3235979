"""The supply-chain controls on the group page and in the REST API, in process on SQLite
and PostgreSQL (the world of :func:`tests.platform_fixtures.build_world`; ``owner`` owns
``org``): bad input answered per field, owners only, the page's blocked images, recent
pulls and deleted-tag policy."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
from flask.testing import FlaskClient

from examples.platform.models import db
from flask_dependency_proxy import state
from flask_dependency_proxy.models.pulls import PullEntry, write_pulls
from flask_dependency_proxy.models.tables import (
    BlockedImage,
    GroupEvent,
    PullRecord,
    SignaturePolicyRow,
    utcnow,
)
from tests.platform_fixtures import login
from tests.test_api import API, Env, env, shared_env  # noqa: F401

PAGE = "/groups/org/-/dependency_proxy"
BLOCKS = f"{API}/org/dependency_proxy/blocks"
DIGEST = "sha256:" + "c" * 64
VECTORS = Path(__file__).parent / "data" / "cosign"


def _clean() -> None:
    for table in (BlockedImage, PullRecord, GroupEvent):
        db.session.execute(sa.delete(table))
    db.session.commit()
    state(None).cache.blocks.reload()  # type: ignore[union-attr]


def _owner(env: Env) -> FlaskClient:  # noqa: F811
    client = env.client()
    login(client, "owner", env.world.passwords["owner"])
    return client


def test_the_api_answers_bad_blocks_and_filters_per_field(env: Env) -> None:  # noqa: F811
    _clean()
    client = env.client()
    bad = client.post(BLOCKS, json={"digest": "sha256:xyz", "reason": ""}, headers=env.auth())
    assert bad.status_code == 400
    assert set(bad.get_json()["errors"]) == {"digest", "reason"}
    unknown = client.post(BLOCKS, json={"digest": DIGEST, "why": "x"}, headers=env.auth())
    assert unknown.status_code == 400 and unknown.get_json()["errors"] == {"why": "unknown field"}
    assert (
        client.post(
            BLOCKS, json={"digest": DIGEST, "reason": "x"}, headers=env.auth("gus")
        ).status_code
        == 403
    )
    assert client.delete(f"{BLOCKS}/999999", headers=env.auth()).status_code == 404
    assert client.delete(f"{BLOCKS}/x'1", headers=env.auth()).status_code == 404
    pulls = f"{API}/org/dependency_proxy/pulls"
    assert set(client.get(f"{pulls}?digest=nope", headers=env.auth()).get_json()["errors"]) == {
        "digest"
    }
    assert set(client.get(f"{pulls}?since=yesterday", headers=env.auth()).get_json()["errors"]) == {
        "since"
    }
    assert client.get(f"{pulls}?per_page=0", headers=env.auth()).status_code == 400
    policy = f"{API}/org/dependency_proxy/deleted_tags"
    assert client.put(policy, json={"policy": "maybe"}, headers=env.auth()).status_code == 400
    saved = client.put(policy, json={"policy": "refuse"}, headers=env.auth()).get_json()
    assert saved == {"policy": "refuse", "default": "refuse", "effective": "refuse"}


def test_the_page_blocks_unblocks_and_shows_recent_pulls(env: Env) -> None:  # noqa: F811
    _clean()
    gid = env.world.group_ids["org"]
    write_pulls(
        state(None).metadata.session,
        [
            PullEntry(
                pulled_at=utcnow(), group_id=gid, image="team/app", reference="1.0",
                digest=DIGEST, outcome="miss", principal_kind="job_token", subject="job:3",
                username="dev", context={"project": "org/team/app", "job": "3"},
                client_address="10.0.0.7", user_agent="skopeo/1.13",
            ),
            PullEntry(
                pulled_at=utcnow(), group_id=env.world.group_ids["other"], image="secret",
                reference="1", digest=DIGEST, outcome="hit", principal_kind="user",
                subject="user:1", username="out",
            ),
        ],
    )  # fmt: skip
    client = _owner(env)
    html = client.get(PAGE).get_data(as_text=True)
    assert "Nothing is blocked." in html
    table = re.search(r'id="dependency-proxy-pull-table".*?</table>', html, re.S)
    assert table is not None
    assert "org/team/app" in table.group(0) and "10.0.0.7" in table.group(0)
    assert "secret" not in table.group(0), "another group's pulls are not shown"

    token = re.search(r'name="dependency_proxy_csrf_token" value="([^"]+)"', html)
    assert token is not None
    csrf = {"dependency_proxy_csrf_token": token.group(1)}
    done = client.post(
        f"{PAGE}/blocks", data={**csrf, "digest": DIGEST, "reason": "bad"}, follow_redirects=True
    ).get_data(as_text=True)
    assert "It was pulled 1 times in the last 30 days, latest by org/team/app." in done
    block = db.session.execute(sa.select(BlockedImage)).scalar_one()
    assert (block.group_id, block.created_by) == (gid, "owner")
    refused = client.post(
        f"{PAGE}/blocks", data={**csrf, "image": "team/app", "reason": "x"}, follow_redirects=True
    ).get_data(as_text=True)
    assert "Not blocked: image and tag_pattern are needed" in refused
    lifted = client.post(
        f"{PAGE}/blocks/{block.id}/unblock", data=csrf, follow_redirects=True
    ).get_data(as_text=True)
    assert f"Unblocked {DIGEST}." in lifted and "Nothing is blocked." in lifted
    assert f"{DIGEST} unblocked by owner" in lifted  # the event

    saved = client.post(
        f"{PAGE}/deleted_tags", data={**csrf, "policy": "serve"}, follow_redirects=True
    ).get_data(as_text=True)
    assert "Tags deleted upstream: serve (saved)." in saved
    assert 'name="policy" value="serve" checked' in saved


COOLDOWN = f"{API}/org/dependency_proxy/cooldown"
COOLDOWNS = f"{API}/org/dependency_proxy/cooldowns"


def _hold(group_id: int, tag: str) -> int:
    from flask_dependency_proxy.models.cooldowns import TagHoldRecords

    hold = TagHoldRecords(lambda: db.session).hold(
        group_id, "team/app", tag, previous_digest=None, pending_digest=DIGEST, now=utcnow()
    )
    return hold.id


def test_the_cooldown_api_answers_bad_settings_per_field_and_releases_once(
    env: Env,  # noqa: F811
) -> None:
    from flask_dependency_proxy.models.tables import TagCooldown

    db.session.execute(sa.delete(TagCooldown))
    db.session.commit()
    client = env.client()
    for body, field in (
        ({"cooldown_hours": "a day"}, "cooldown_hours"),
        ({"cooldown_hours": -1}, "cooldown_hours"),
        ({"new_tags": "maybe"}, "new_tags"),
        ({"digest_pulls": 1}, "digest_pulls"),
        ({"exempt": "team/*"}, "exempt"),
        ({"exempt": ["Team App"]}, "exempt"),
        ({"hours": 1}, "hours"),
    ):
        bad = client.put(COOLDOWN, json=body, headers=env.auth())
        assert bad.status_code == 400, (body, bad.get_data(as_text=True))
        assert field in bad.get_json()["errors"], (body, bad.get_json())
    broken = client.put(COOLDOWN, data="[", content_type="application/json", headers=env.auth())
    assert broken.status_code == 400
    assert (
        client.put(COOLDOWN, json={"cooldown_hours": 2}, headers=env.auth("gus")).status_code == 403
    )
    saved = client.put(
        COOLDOWN, json={"cooldown_hours": 1.5, "new_tags": "refuse"}, headers=env.auth()
    ).get_json()
    assert (saved["cooldown_hours"], saved["new_tags"], saved["digest_pulls"]) == (
        1.5,
        "refuse",
        None,
    )
    assert saved["effective"] == {
        "cooldown_hours": 1.5, "new_tags": "refuse", "digest_pulls": "allow", "exempt": []
    }  # fmt: skip

    hold_id = _hold(env.world.group_ids["org"], "fresh")
    other = _hold(env.world.group_ids["other"], "fresh")
    [listed] = client.get(COOLDOWNS, headers=env.auth()).get_json()
    assert (listed["id"], listed["tag"], listed["previous_digest"]) == (hold_id, "fresh", None)
    assert listed["release_at"] is not None and listed["released_at"] is None
    assert client.post(f"{COOLDOWNS}/{other}/release", headers=env.auth()).status_code == 404
    assert client.post(f"{COOLDOWNS}/x1/release", headers=env.auth()).status_code == 404
    assert client.get(f"{COOLDOWNS}/{hold_id}/release", headers=env.auth()).status_code == 405
    released = client.post(f"{COOLDOWNS}/{hold_id}/release", headers=env.auth())
    assert released.status_code == 200 and released.get_json()["released_by"]
    assert client.post(f"{COOLDOWNS}/{hold_id}/release", headers=env.auth()).status_code == 404
    assert client.put(COOLDOWN, json={"cooldown_hours": 0}, headers=env.auth()).status_code == 200
    assert client.get(COOLDOWNS, headers=env.auth()).get_json() == [], "off: forgotten"
    client.put(COOLDOWN, json={"cooldown_hours": None, "new_tags": None}, headers=env.auth())


def test_the_page_sets_the_cooldown_and_releases_a_tag(env: Env) -> None:  # noqa: F811
    from flask_dependency_proxy.models.tables import TagCooldown

    db.session.execute(sa.delete(TagCooldown))
    db.session.commit()
    client = _owner(env)
    html = client.get(PAGE).get_data(as_text=True)
    assert "No tag is in cooldown." in html
    token = re.search(r'name="dependency_proxy_csrf_token" value="([^"]+)"', html)
    assert token is not None
    csrf = {"dependency_proxy_csrf_token": token.group(1)}
    bad = client.post(
        f"{PAGE}/cooldown", data={**csrf, "hours": "soon"}, follow_redirects=True
    ).get_data(as_text=True)
    assert "Not saved: cooldown hours must be a number" in bad
    saved = client.post(
        f"{PAGE}/cooldown",
        data={**csrf, "hours": "12", "new_tags": "refuse", "exempt": "acme/* base"},
        follow_redirects=True,
    ).get_data(as_text=True)
    assert "Tag cooldown: 12 hours (saved)." in saved
    assert 'value="acme/* base"' in saved and '<option value="refuse" selected' in saved

    hold_id = _hold(env.world.group_ids["org"], "1.0")
    html = client.get(PAGE).get_data(as_text=True)
    row = re.search(rf'data-cooldown="{hold_id}".*?</tr>', html, re.S)
    assert row is not None and "team/app:1.0" in row.group(0) and DIGEST[:19] in row.group(0)
    done = client.post(
        f"{PAGE}/cooldowns/{hold_id}/release", data=csrf, follow_redirects=True
    ).get_data(as_text=True)
    assert f"Released team/app:1.0: its next pull gets {DIGEST}." in done
    assert "released from cooldown early by owner" in done  # the event
    client.post(f"{PAGE}/cooldown", data={**csrf, "hours": "", "new_tags": "", "exempt": ""})


def test_the_page_sets_the_signature_policy_and_the_api_its_index_rule(
    env: Env,  # noqa: F811
) -> None:
    db.session.execute(sa.delete(SignaturePolicyRow))
    db.session.commit()
    gate = state(None).signatures
    assert gate is not None
    gate.reload()
    gid = env.world.group_ids["org"]
    pem = (VECTORS / "cimage-key-valid" / "cosign.pub").read_text()
    client = _owner(env)
    html = client.get(PAGE).get_data(as_text=True)
    form = re.search(r'id="dependency-proxy-signature-form".*?</form>', html, re.S)
    assert form is not None
    for field in ("mode", "index_rule", "new_key_pem", "new_key_name", "new_key_images"):
        assert f'name="{field}"' in form.group(0)
    assert 'name="identities"' in form.group(0) and "dependency_proxy_csrf_token" in form.group(0)
    assert "follows the instance's default (off)" in html
    url = f"{PAGE}/signature_policy"
    assert client.post(url, data={"mode": "off"}).status_code == 400, "no CSRF token: refused"

    token = re.search(r'name="dependency_proxy_csrf_token" value="([^"]+)"', html)
    assert token is not None
    csrf = {"dependency_proxy_csrf_token": token.group(1)}
    saved = client.post(
        url,
        data={
            **csrf,
            "mode": "enforce",
            "index_rule": "platforms",
            "new_key_name": "release",
            "new_key_images": "team/*",
            "new_key_pem": pem,
            "identities": "",
        },
        follow_redirects=True,
    ).get_data(as_text=True)
    assert "Signature policy: enforce (saved)." in saved
    policy = gate.policy(gid)
    assert (policy["default"], policy["mode"], policy["index_rule"]) == (
        False,
        "enforce",
        "platforms",
    )
    assert [(k["name"], k["images"]) for k in policy["keys"]] == [("release", "team/*")]
    listed = re.search(r'id="dependency-proxy-signature-form".*?</form>', saved, re.S)
    assert listed is not None and 'name="keep_key" value="0" checked' in listed.group(0)
    assert '<option value="platforms" selected' in listed.group(0)
    assert "release" in listed.group(0) and "team/*" in listed.group(0)

    for data, problem in (
        ({"mode": "enforce", "index_rule": "index"}, "needs at least one trusted key"),
        ({"mode": "warn", "keep_key": "0", "new_key_pem": "garbage"}, "is not a PEM public key"),
        ({"mode": "warn", "keep_key": "0", "identities": "https://issuer"}, "issuer and subject"),
        ({"mode": "strict", "keep_key": "0"}, "mode must be one of"),
    ):
        refused = client.post(url, data={**csrf, **data}, follow_redirects=True)
        assert refused.status_code == 200
        assert "Not saved: " in refused.get_data(as_text=True)
        assert problem in refused.get_data(as_text=True), data
    assert gate.policy(gid) == policy, "nothing saved"

    api = f"{API}/org/dependency_proxy/signature_policy"
    answer = client.put(
        api, json={**policy, "default": None, "index_rule": "index"}, headers=env.auth()
    )
    assert answer.status_code == 400  # "default" is not a field to set
    body = {k: policy[k] for k in ("mode", "keys", "identities")}
    answer = client.put(api, json={**body, "index_rule": "index"}, headers=env.auth())
    assert answer.status_code == 200 and answer.get_json()["index_rule"] == "index"
    assert client.get(api, headers=env.auth()).get_json()["index_rule"] == "index"

    back = client.post(url, data={**csrf, "mode": ""}, follow_redirects=True).get_data(as_text=True)
    assert "Signature policy: the default of the instance (saved)." in back
    assert gate.policy(gid)["default"] is True
