"""The group page's usage chart and cached-images list, and the API's image listing and
deletion, in process on SQLite and PostgreSQL (the world of
:func:`tests.platform_fixtures.build_world`; ``owner`` owns ``org``)."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ElementTree

import sqlalchemy as sa
from flask.testing import FlaskClient

from examples.platform.models import db
from flask_dependency_proxy import state
from flask_dependency_proxy.models.tables import UsageDay
from flask_dependency_proxy.models.usage import write_usage
from flask_dependency_proxy.usage import DayCounts
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
