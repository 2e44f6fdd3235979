"""``GET .../dependency_proxy/usage``: the group's figures per day, totals and hit ratio."""

from __future__ import annotations

import datetime as dt

from flask_dependency_proxy import state
from flask_dependency_proxy.models.usage import DayCounts, write_usage
from tests.test_api import API, Env, env, shared_env  # noqa: F401


def test_usage_figures_and_validation(env: Env) -> None:  # noqa: F811
    url = f"{API}/org/dependency_proxy/usage"
    body = env.client().get(url, headers=env.auth()).get_json()
    assert len(body["days"]) == 30 and body["hit_ratio"] is None
    today = dt.datetime.now(dt.UTC).date()
    gid = env.world.group_ids["org"]
    write_usage(state(None).metadata.session, {(gid, today): DayCounts(3, 1, 900, 100)})
    body = env.client().get(f"{url}?days=7", headers=env.auth()).get_json()
    assert len(body["days"]) == 7
    assert body["days"][-1] == {
        "day": today.isoformat(),
        "pulls_cached": 3,
        "pulls_upstream": 1,
        "bytes_cached": 900,
        "bytes_upstream": 100,
    }
    assert (body["bytes_saved"], body["hit_ratio"]) == (900, 0.75)
    for bad in ("0", "x", "400", "²", "١٢", "１２"):
        response = env.client().get(url, query_string={"days": bad}, headers=env.auth())
        assert response.status_code == 400, bad
        assert "days must be a whole number" in response.get_json()["message"]
