"""Predictive refresh on the group's surfaces, in process on SQLite and PostgreSQL (the
world of :func:`tests.platform_fixtures.build_world`; ``owner`` owns ``org``):

- ``GET .../refresh`` and the group page show, per refreshed tag, when the refresher
  last checked and refreshed it and whether the tag's last pull was warm because of it
  (it served, from the cache, the digest the refresher fetched ahead, after the refresh);
- ``PUT .../refresh`` refuses bad input field by field, in JSON;
- ``POST .../warm`` answers 400, 401, 409, 415 and 503 as documented, and queues the
  warm-up of an owner's personal access token and of a CI job's token.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
import typing as t

import pytest
import sqlalchemy as sa

from examples.platform import services
from examples.platform.models import Project, User, db
from flask_dependency_proxy import state
from flask_dependency_proxy.admin.refresh import WarmQueue
from flask_dependency_proxy.cache.warm import Target
from flask_dependency_proxy.models.hot_tags import HotTagRecords
from flask_dependency_proxy.models.pulls import PullEntry, write_pulls
from flask_dependency_proxy.models.tables import PullRecord, TagRefresh, utcnow
from tests.platform_fixtures import login
from tests.test_api import API, Env, env, json_error, shared_env  # noqa: F401

# The refresh API and page, not the database, are the subject: SQLite is enough here.
UNWANTED_COMBINATIONS = [{"database_backend": "postgresql"}]

REFRESH = f"{API}/org/dependency_proxy/refresh"
WARM = f"{API}/org/dependency_proxy/warm"
PAGE = "/groups/org/-/dependency_proxy"
OLD = "sha256:" + "1" * 64
NEW = "sha256:" + "2" * 64
OTHER = "sha256:" + "3" * 64


@pytest.fixture
def clean(env: Env) -> Env:  # noqa: F811
    """``env`` without refresh rows or pull records."""
    for table in (TagRefresh, PullRecord):
        db.session.execute(sa.delete(table))
    db.session.commit()
    return env


# -- what the refresher did, and whether the last pull was warm because of it ---------------------


def _refreshed(group_id: int, image: str, tag: str, at: dt.datetime, digest: str) -> None:
    HotTagRecords(lambda: state(None).metadata.session).save_state(
        group_id,
        image,
        tag,
        checked_at=at,
        platforms=["linux/amd64"],
        refreshed_digest=digest,
        prefetched_bytes=3 * 1024 * 1024,
    )


def _pulled(
    group_id: int, image: str, tag: str, at: dt.datetime, digest: str, outcome: str
) -> None:
    write_pulls(
        state(None).metadata.session,
        [
            PullEntry(
                pulled_at=at,
                group_id=group_id,
                image=image,
                reference=tag,
                digest=digest,
                outcome=outcome,
                principal_kind="user",
                subject="1",
                username="owner",
            )
        ],
    )


def _seed_refreshes(env: Env) -> dt.datetime:  # noqa: F811
    """Four refreshed tags of ``org``; only ``team/warm:1``'s last pull was warm because
    of its refresh."""
    org, other = env.world.group_ids["org"], env.world.group_ids["other"]
    refreshed = utcnow().replace(microsecond=0) - dt.timedelta(hours=1)
    after = refreshed + dt.timedelta(minutes=10)
    # Refreshed, then pulled from the cache with the digest fetched ahead.
    _refreshed(org, "team/warm", "1", refreshed, NEW)
    _pulled(org, "team/warm", "1", refreshed - dt.timedelta(hours=1), OLD, "hit")
    _pulled(org, "team/warm", "1", after, NEW, "hit")
    _pulled(other, "team/warm", "1", after + dt.timedelta(minutes=1), NEW, "miss")
    # Refreshed, but the last pull after it was a miss of another digest.
    _refreshed(org, "team/moved", "1", refreshed, NEW)
    _pulled(org, "team/moved", "1", after, NEW, "revalidated")
    _pulled(org, "team/moved", "1", after + dt.timedelta(minutes=1), OTHER, "miss")
    # Refreshed, and not pulled since.
    _refreshed(org, "team/idle", "1", refreshed, NEW)
    _pulled(org, "team/idle", "1", refreshed - dt.timedelta(minutes=1), NEW, "hit")
    # Checked, never moved.
    HotTagRecords(lambda: state(None).metadata.session).save_state(
        org, "team/still", "1", checked_at=refreshed, platforms=[]
    )
    return refreshed


def test_the_api_answers_the_last_pull_and_whether_the_refresh_made_it_warm(clean: Env) -> None:
    refreshed = _seed_refreshes(clean)
    answer = clean.client().get(REFRESH, headers=clean.auth())
    assert answer.status_code == 200, answer.get_data(as_text=True)
    rows = {row["image"]: row for row in answer.get_json()["tags_refreshed"]}
    warm = rows["team/warm"]
    stamp = refreshed.isoformat() + "Z"
    assert (warm["refreshed_at"], warm["refreshed_digest"]) == (stamp, NEW)
    assert warm["last_pull"] == {
        "pulled_at": (refreshed + dt.timedelta(minutes=10)).isoformat() + "Z",
        "digest": NEW,
        "outcome": "hit",
    }
    assert warm["warm_because_of_refresh"] is True
    assert rows["team/moved"]["last_pull"]["outcome"] == "miss"
    assert rows["team/moved"]["warm_because_of_refresh"] is False
    assert rows["team/idle"]["last_pull"] is None
    assert rows["team/idle"]["warm_because_of_refresh"] is False
    assert rows["team/still"]["refreshed_at"] is None
    assert rows["team/still"]["warm_because_of_refresh"] is False


def test_the_page_shows_when_each_tag_was_refreshed_and_whether_its_pull_was_warm(
    clean: Env,
) -> None:
    refreshed = _seed_refreshes(clean)
    client = clean.client()
    login(client, "owner", clean.world.passwords["owner"])
    html = client.get(PAGE).get_data(as_text=True)

    section = re.search(r'<section id="dependency-proxy-refresh">.*?</section>', html, re.S)
    assert section, "no refresh section on the page"
    rows = {
        image: row
        for image, row in re.findall(
            r'<tr data-image="([^"]+)" data-tag="1">(.*?)</tr>', section.group(0), re.S
        )
    }
    assert set(rows) == {"team/warm", "team/moved", "team/idle", "team/still"}
    shown = refreshed.strftime("%Y-%m-%d %H:%M")
    assert shown in rows["team/warm"] and NEW.split(":")[1][:12] in rows["team/warm"]
    assert "3.0 MiB" in rows["team/warm"]
    assert re.search(r'class="warm[^"]*"[^>]*>\s*Yes', rows["team/warm"])
    assert re.search(r'class="warm[^"]*"[^>]*>\s*No', rows["team/moved"])
    assert "miss" in rows["team/moved"]
    assert "not pulled since" in rows["team/idle"]
    assert "never moved" in rows["team/still"]
    # No inline style or handler: the page stays clean under a strict CSP.
    assert not re.search(r"<[a-zA-Z][^>]*\s(?:style|on[a-z]+)\s*=", section.group(0))


# -- PUT refresh: bad input ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"enabled": "yes"}, "enabled"),
        ({"enabled": 1}, "enabled"),
        ({"tags": 0}, "tags"),
        ({"tags": 1001}, "tags"),
        ({"tags": "5"}, "tags"),
        ({"tags": True}, "tags"),
        ({"tags": 2.5}, "tags"),
        ({"interval_seconds": 59}, "interval_seconds"),
        ({"interval_seconds": 7 * 24 * 3600 + 1}, "interval_seconds"),
        ({"interval_seconds": "900"}, "interval_seconds"),
        ({"interval_seconds": [900]}, "interval_seconds"),
        ({"enabled": True, "budget": 5}, "budget"),
    ],
)
def test_put_refresh_refuses_each_bad_field_by_name(
    env: Env,  # noqa: F811
    body: dict[str, t.Any],
    field: str,
) -> None:
    client = env.client()
    message = json_error(client.put(REFRESH, json=body, headers=env.auth()), 400)
    assert field in message
    answer = client.put(REFRESH, json=body, headers=env.auth()).get_json()
    assert list(answer["errors"]) == [field]
    # Nothing was changed.
    own = client.get(REFRESH, headers=env.auth()).get_json()["own"]
    assert own == {"enabled": None, "tags": None, "interval_seconds": None}


@pytest.mark.parametrize(
    ("data", "content_type", "status"),
    [
        (b"[]", "application/json", 400),
        (b"{}", "application/json", 400),
        (b'"tags"', "application/json", 400),
        (b"{not json", "application/json", 400),
        (b'{"tags": 5}', "text/plain", 415),
        (b'{"tags": 5}', None, 415),
    ],
)
def test_put_refresh_refuses_a_body_that_is_no_json_object(
    env: Env,  # noqa: F811
    data: bytes,
    content_type: str | None,
    status: int,
) -> None:
    headers = env.auth()
    if content_type:
        headers["Content-Type"] = content_type
    json_error(env.client().put(REFRESH, data=data, headers=headers), status)


def test_put_refresh_sets_and_clears_the_group_settings(env: Env) -> None:  # noqa: F811
    client = env.client()
    answer = client.put(
        REFRESH, json={"enabled": True, "tags": 3, "interval_seconds": 600}, headers=env.auth()
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert (body["enabled"], body["tags"], body["interval_seconds"]) == (True, 3, 600)
    cleared = client.put(REFRESH, json={"tags": None}, headers=env.auth()).get_json()
    assert cleared["own"] == {"enabled": True, "tags": None, "interval_seconds": 600}


# -- POST warm -----------------------------------------------------------------------------------


class _Recorder:
    """A warm-up function that records what it is given and can hold the queue's thread."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str, list[Target]]] = []
        self.started = threading.Event()
        self.release = threading.Event()
        self.release.set()

    def __call__(self, group_id: int, group_path: str, targets: t.Sequence[Target]) -> None:
        self.calls.append((group_id, group_path, list(targets)))
        self.started.set()
        self.release.wait(30)


class _SmallQueue(WarmQueue):
    MAX_WAITING = 2


@pytest.fixture
def recorder(env: Env, monkeypatch: pytest.MonkeyPatch) -> t.Iterator[_Recorder]:  # noqa: F811
    """The app's warm queue, with its warm-ups recorded instead of run; the proxy on for
    ``org`` and ``org/team``."""
    for path in ("org", "org%2Fteam"):
        on = env.client().put(
            f"{API}/{path}/dependency_proxy/settings", json={"enabled": True}, headers=env.auth()
        )
        assert on.status_code == 200, on.get_data(as_text=True)
    record = _Recorder()
    queue = _SmallQueue(env.app, record, release=lambda: None)
    monkeypatch.setattr(state(env.app), "warm_queue", queue)
    yield record
    record.release.set()
    queue.join()


def test_an_owners_personal_access_token_queues_a_warm_up(env: Env, recorder: _Recorder) -> None:  # noqa: F811
    answer = env.client().post(
        WARM,
        json={"references": ["team/app:1.0", "org/dependency_proxy/containers/node:22", 7]},
        headers=env.auth(),
    )
    assert answer.status_code == 202, answer.get_data(as_text=True)
    body = answer.get_json()
    assert [(q["image"], q["tag_or_digest"]) for q in body["queued"]] == [
        ("team/app", "1.0"),
        ("node", "22"),
    ]
    assert [(e["index"], e["reference"]) for e in body["errors"]] == [(2, None)]
    assert recorder.started.wait(10)
    assert recorder.calls == [
        (env.world.group_ids["org"], "org", [Target("team/app", "1.0"), Target("node", "22")])
    ]


def test_a_ci_jobs_token_queues_a_warm_up_and_a_finished_jobs_is_refused(
    env: Env,  # noqa: F811
    recorder: _Recorder,
) -> None:
    project = db.session.scalars(
        sa.select(Project).where(Project.full_path == "org/team/app")
    ).one()
    user = db.session.get(User, env.world.user_ids["dev"])
    job, secret = services.start_job(project, user)
    url = f"{API}/org%2Fteam/dependency_proxy/warm"
    answer = env.client().post(url, json=["alpine:3"], headers={"JOB-TOKEN": secret})
    assert answer.status_code == 202, answer.get_data(as_text=True)
    assert recorder.started.wait(10)
    assert recorder.calls[0][1:] == ("org/team", [Target("alpine", "3")])
    services.finish_job(job)
    json_error(env.client().post(url, json=["alpine:3"], headers={"JOB-TOKEN": secret}), 401)


@pytest.mark.parametrize(
    "headers",
    [{}, {"JOB-TOKEN": "not-a-job-token"}, {"JOB-TOKEN": " "}, {"PRIVATE-TOKEN": "nope"}],
)
def test_warm_without_a_valid_token_is_401(
    env: Env,  # noqa: F811
    recorder: _Recorder,
    headers: dict[str, str],
) -> None:
    json_error(env.client().post(WARM, json=["alpine:3"], headers=headers), 401)
    assert recorder.calls == []


@pytest.mark.parametrize(
    "body",
    [
        [],
        {},
        {"references": []},
        {"references": "alpine:3"},
        "alpine:3",
        ["x:1"] * 101,
        ["Not A Reference!", "other/dependency_proxy/containers/node:22", "ghcr.io/a/b:1"],
    ],
)
def test_warm_with_nothing_to_warm_is_400(
    env: Env,  # noqa: F811
    recorder: _Recorder,
    body: t.Any,
) -> None:
    json_error(env.client().post(WARM, json=body, headers=env.auth()), 400)
    assert recorder.calls == []


def test_warm_of_malformed_json_is_400_and_of_another_type_415(
    env: Env,  # noqa: F811
    recorder: _Recorder,
) -> None:
    headers = {**env.auth(), "Content-Type": "application/json"}
    json_error(env.client().post(WARM, data=b"[not json", headers=headers), 400)
    headers["Content-Type"] = "text/plain"
    json_error(env.client().post(WARM, data=b'["alpine:3"]', headers=headers), 415)
    assert recorder.calls == []


def test_warm_of_a_group_with_the_proxy_off_is_409(env: Env, recorder: _Recorder) -> None:  # noqa: F811
    client = env.client()
    off = client.put(
        f"{API}/org/dependency_proxy/settings", json={"enabled": False}, headers=env.auth()
    )
    assert off.status_code == 200, off.get_data(as_text=True)
    message = json_error(client.post(WARM, json=["alpine:3"], headers=env.auth()), 409)
    assert "off" in message
    assert recorder.calls == []


def test_warm_when_too_many_warm_ups_wait_is_503(env: Env, recorder: _Recorder) -> None:  # noqa: F811
    client = env.client()
    recorder.release.clear()  # the queue's thread holds the first warm-up
    assert client.post(WARM, json=["a:1"], headers=env.auth()).status_code == 202
    assert recorder.started.wait(10)
    for name in ("b:1", "c:1"):  # _SmallQueue.MAX_WAITING
        assert client.post(WARM, json=[name], headers=env.auth()).status_code == 202
    message = json_error(client.post(WARM, json=["d:1"], headers=env.auth()), 503)
    assert "try again" in message
    recorder.release.set()
    state(env.app).warm_queue.join()  # type: ignore[union-attr]
    assert [call[2][0].image for call in recorder.calls] == ["a", "b", "c"]
