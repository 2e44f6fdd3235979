"""The group page's usage chart and cached-images list, and the API's image listing and
deletion, in process on SQLite and PostgreSQL (the world of
:func:`tests.platform_fixtures.build_world`; ``owner`` owns ``org``)."""

from __future__ import annotations

import datetime as dt
import json
import re
import typing as t
import xml.etree.ElementTree as ElementTree

import pytest
import sqlalchemy as sa
from flask.testing import FlaskClient

from examples.platform.models import db
from flask_dependency_proxy import state
from flask_dependency_proxy.models.documents import image_size
from flask_dependency_proxy.models.tables import (
    CachedBlob,
    CachedManifest,
    Status,
    UsageDay,
    utcnow,
)
from flask_dependency_proxy.models.usage import DayCounts, write_usage
from tests import lifecycle_fixtures as lf
from tests.platform_fixtures import login
from tests.test_api import API, Env, env, shared_env  # noqa: F401

PAGE = "/groups/org/-/dependency_proxy"


def owner(env: Env) -> FlaskClient:  # noqa: F811
    client = env.client()
    login(client, "owner", env.world.passwords["owner"])
    return client


def chart(html: str) -> ElementTree.Element:
    found = re.search(r"<svg .*?</svg>", html, re.S)
    assert found, "no chart on the page"
    return ElementTree.fromstring(found.group(0))


def test_the_chart_says_no_pulls_yet_then_shows_the_usage_figures(env: Env) -> None:  # noqa: F811
    db.session.execute(sa.delete(UsageDay))
    db.session.commit()
    client = owner(env)
    html = client.get(PAGE).get_data(as_text=True)
    assert re.search(r'id="dependency-proxy-hit-ratio"[^>]*>\s*Last 30 days:\s*no pulls yet', html)
    assert "no pulls yet" in (chart(html).get("aria-label") or "")

    gid = env.world.group_ids["org"]
    today = dt.datetime.now(dt.UTC).date()
    write_usage(
        state(None).metadata.session,
        {
            (gid, today): DayCounts(6, 2, 5 * 1024 * 1024, 1024 * 1024),
            (gid, today - dt.timedelta(days=29)): DayCounts(2, 0, 0, 0),
            # Outside the window, and another group's: not counted.
            (gid, today - dt.timedelta(days=30)): DayCounts(100, 100, 10**9, 10**9),
            (env.world.group_ids["other"], today): DayCounts(50, 50, 10**9, 10**9),
        },
    )
    html = client.get(PAGE).get_data(as_text=True)
    usage = client.get(f"{API}/org/dependency_proxy/usage", headers=env.auth()).get_json()
    assert (usage["pulls_cached"], usage["pulls_upstream"]) == (8, 2)
    assert "hit ratio <strong>80.0 %</strong>" in html
    assert "(8 of 10 pulls served from the cache)" in html
    assert f'data-bytes="{usage["bytes_saved"]}">5.0 MiB</strong>' in html
    svg = chart(html)
    label = svg.get("aria-label") or ""
    assert "8 pulls served from the cache, 2 fetched upstream, hit ratio 80.0 %" in label
    assert "5.0 MiB of upstream downloads saved" in label
    ns = "{http://www.w3.org/2000/svg}"
    tips = {title.text for title in svg.iter(f"{ns}title")}
    assert f"{today:%Y-%m-%d}: 6 from cache" in tips
    assert f"{today:%Y-%m-%d}: 2 fetched upstream" in tips
    # The table beside it has the same 30 days, newest first.
    rows = re.findall(r"<tr><td>(\d{4}-\d\d-\d\d)</td>", html)
    assert len(rows) == 30 and rows[0] == today.isoformat()


# -- the list: order and filter -------------------------------------------------------------------


def seed_list(env: Env) -> dict[str, int]:  # noqa: F811
    """Three images of ``org`` with distinct sizes and pull times; one of ``other``."""
    org = env.world.group_ids["org"]
    now = utcnow()
    rows = {
        "small/app": (lf.image_manifest(10, [100]), now - dt.timedelta(days=1)),
        "big/app": (lf.image_manifest(10, [9000]), now - dt.timedelta(days=3)),
        "a_b/mid": (lf.image_manifest(10, [5000]), now - dt.timedelta(days=2)),
        "axb/mid": (lf.image_manifest(10, [4000]), now),
    }
    for image, (content, pulled) in rows.items():
        lf.add_manifest(org, image, "1", content=content, last_read_at=pulled)
    lf.add_manifest(env.world.group_ids["other"], "big/app", "1")
    return {image: t.cast(int, image_size(content)) for image, (content, _) in rows.items()}


def listed(env: Env, **query: str) -> list[str]:  # noqa: F811
    response = env.client().get(
        f"{API}/org/dependency_proxy/manifests", query_string=query, headers=env.auth()
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    return [m["image"] for m in response.get_json()]


def test_api_orders_by_size_and_last_pull_and_filters_by_name(env: Env) -> None:  # noqa: F811
    seed_list(env)
    newest_first = ["axb/mid", "a_b/mid", "big/app", "small/app"]
    assert listed(env) == newest_first
    assert listed(env, order_by="created_at", sort="asc") == newest_first[::-1]
    assert listed(env, order_by="size") == ["big/app", "a_b/mid", "axb/mid", "small/app"]
    assert listed(env, order_by="size", sort="asc") == [
        "small/app",
        "axb/mid",
        "a_b/mid",
        "big/app",
    ]
    assert listed(env, order_by="last_pulled") == ["axb/mid", "small/app", "a_b/mid", "big/app"]
    assert listed(env, order_by="last_pulled", sort="asc")[0] == "big/app"
    assert listed(env, search="APP", order_by="size") == ["big/app", "small/app"]
    # LIKE wildcards are plain characters.
    assert listed(env, search="a_b") == ["a_b/mid"]
    assert listed(env, search="mid", order_by="size", sort="asc", per_page="1", page="2") == [
        "a_b/mid"
    ]


@pytest.mark.parametrize(
    "query",
    [
        {"order_by": "name"},
        {"order_by": "size;drop"},
        {"sort": "up"},
        {"search": "%"},
        {"search": "a'--"},
        {"search": "a\x00b"},
        {"search": "x" * 256},
    ],
)
def test_api_listing_parameters_are_validated(env: Env, query: dict[str, str]) -> None:  # noqa: F811
    response = env.client().get(
        f"{API}/org/dependency_proxy/manifests", query_string=query, headers=env.auth()
    )
    assert response.status_code == 400, response.get_data(as_text=True)
    assert set(response.get_json()["errors"]) == set(query)


def test_page_sorts_and_filters_and_falls_back_on_bad_values(env: Env) -> None:  # noqa: F811
    seed_list(env)
    client = owner(env)

    def images(**query: str) -> list[str]:
        response = client.get(PAGE, query_string=query)
        assert response.status_code == 200
        return re.findall(r'<td class="image">([^<]+)</td>', response.get_data(as_text=True))

    assert images(order_by="size", sort="asc") == ["small/app", "axb/mid", "a_b/mid", "big/app"]
    assert images(order_by="last_pulled") == ["axb/mid", "small/app", "a_b/mid", "big/app"]
    assert images(search="mid") == ["axb/mid", "a_b/mid"]
    html = client.get(PAGE, query_string={"search": "mid", "order_by": "size"}).get_data(
        as_text=True
    )
    # Sort links keep the filter and offer the other direction.
    assert "order_by=size&amp;sort=asc&amp;search=mid" in html
    assert 'value="mid"' in html
    for bad in ({"order_by": "x"}, {"sort": "x"}, {"search": "%' or 1=1"}, {"search": "\x00"}):
        assert images(**bad) == ["axb/mid", "a_b/mid", "big/app", "small/app"]


# -- deleting one image ---------------------------------------------------------------------------


def seed_images(env: Env) -> dict[str, t.Any]:  # noqa: F811
    """``multi`` (an index with two platforms) shares a layer with ``solo``; ``other``
    has ``multi`` too."""
    org, other = env.world.group_ids["org"], env.world.group_ids["other"]
    shared = lf.add_blob(org, b"shared layer")
    own = lf.add_blob(org, b"own layer")
    solo_only = lf.add_blob(org, b"solo layer")
    config = lf.add_blob(org, b"config")
    lf.add_blob(other, b"own layer")

    def manifest(layers: list[str]) -> bytes:
        return json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": lf.OCI_MANIFEST,
                "config": {"mediaType": "c", "size": 6, "digest": config},
                "layers": [{"mediaType": "l", "size": 10, "digest": d} for d in layers],
            }
        ).encode()

    amd64, arm64 = manifest([shared, own]), manifest([own])
    for group in (org, other):
        lf.add_manifest(group, "multi", None, content=amd64)
        lf.add_manifest(group, "multi", None, content=arm64)
        lf.add_manifest(
            group, "multi", "1.0", content=lf.image_index([amd64, arm64]), media_type=lf.OCI_INDEX
        )
    lf.add_manifest(org, "solo", "2", content=manifest([shared, solo_only]))
    return {"shared": shared, "own": own, "solo": solo_only, "config": config}


def test_api_deletes_one_image_and_the_blobs_only_it_uses(env: Env) -> None:  # noqa: F811
    digests = seed_images(env)
    org, other = env.world.group_ids["org"], env.world.group_ids["other"]
    client = env.client()
    url = f"{API}/org/dependency_proxy/images/multi"
    assert client.delete(url).status_code == 401
    assert client.delete(url, headers=env.auth("maint")).status_code == 403
    response = client.delete(url, headers=env.auth())
    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json()["scheduled_for_deletion"] == {"manifests": 3, "blobs": 1}
    pending = Status.PENDING_DESTRUCTION
    manifests = {d: s for d, s in lf.rows(CachedManifest, org)}
    assert sorted(manifests.values()) == [Status.DEFAULT, pending, pending, pending]
    blobs = dict(lf.rows(CachedBlob, org))
    # The shared layer and the config stay: ``solo`` uses them.
    assert blobs == {
        digests["shared"]: Status.DEFAULT,
        digests["own"]: pending,
        digests["solo"]: Status.DEFAULT,
        digests["config"]: Status.DEFAULT,
    }
    assert {s for _, s in lf.rows(CachedManifest, other)} == {Status.DEFAULT}
    assert {s for _, s in lf.rows(CachedBlob, other)} == {Status.DEFAULT}
    # Gone from the registry's point of view: a second delete finds nothing.
    assert client.delete(url, headers=env.auth()).status_code == 404

    # Cleanup deletes the rows; the file ``other`` still references stays.
    report = state(None).lifecycle.cleanup()
    assert (report.manifests_deleted, report.blobs_deleted) == (3, 1)
    assert state(None).store.size(digests["own"]) is not None

    solo = client.delete(f"{API}/org/dependency_proxy/images/solo", headers=env.auth())
    assert solo.get_json()["scheduled_for_deletion"] == {"manifests": 1, "blobs": 3}


@pytest.mark.parametrize(
    ("image", "status"),
    [("nothing/here", 404), ("Multi", 400), ("multi/", 400), ("a..b", 400), ("x" * 256, 400)],
)
def test_api_delete_needs_a_cached_valid_name(env: Env, image: str, status: int) -> None:  # noqa: F811
    seed_images(env)
    response = env.client().delete(f"{API}/org/dependency_proxy/images/{image}", headers=env.auth())
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    # A subgroup's path, encoded or not, is the group part; its cache has no ``multi``.
    for group in ("org%2Fteam", "org/team"):
        other = env.client().delete(
            f"{API}/{group}/dependency_proxy/images/multi", headers=env.auth()
        )
        assert other.get_json() == {"message": "404 Image Not Found"}
    assert (
        env.client().get(f"{API}/org/dependency_proxy/images/multi", headers=env.auth()).status_code
        == 405
    )


def test_page_deletes_one_image_after_confirmation(env: Env) -> None:  # noqa: F811
    seed_images(env)
    client = owner(env)
    html = client.get(PAGE).get_data(as_text=True)
    assert f'href="{PAGE}/images/multi/delete"' in html
    confirm = client.get(f"{PAGE}/images/multi/delete")
    assert confirm.status_code == 200
    text = confirm.get_data(as_text=True)
    assert "Delete multi from the Dependency Proxy cache of org?" in text
    assert "3 manifests" in text and "1.0" in text
    # Nothing happened yet; a POST without the form's token is refused.
    assert client.post(f"{PAGE}/images/multi/delete").status_code == 400
    assert {s for _, s in lf.rows(CachedManifest)} == {Status.DEFAULT}
    token = re.search(r'name="dependency_proxy_csrf_token" value="([^"]+)"', text)
    assert token is not None
    done = client.post(
        f"{PAGE}/images/multi/delete",
        data={"dependency_proxy_csrf_token": token.group(1)},
        follow_redirects=True,
    )
    page = done.get_data(as_text=True)
    assert "Image multi deleted: 3 manifests and 1 blobs are scheduled for deletion" in page
    assert f'href="{PAGE}/images/multi/delete"' not in page
    assert f'href="{PAGE}/images/solo/delete"' in page
    assert client.get(f"{PAGE}/images/multi/delete").status_code == 404
    assert client.get(f"{PAGE}/images/Bad..Name/delete").status_code == 404
