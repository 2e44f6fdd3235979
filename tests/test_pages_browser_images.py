"""The cached-images part of the group page in Chromium: the chart of what the cache
saved, the list ordered and filtered, one image deleted after a confirmation, against
the example platform under gunicorn with skopeo pulling through it from a real upstream.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, Page, expect

from flask_dependency_proxy.cache.usage import FLUSH_SECONDS
from flask_dependency_proxy.models.stats import human_size
from tests.support import checks, images
from tests.support.clients import Skopeo
from tests.support.platform import PlatformFactory
from tests.support.registry import Registry
from tests.test_pages_browser import (  # noqa: F401
    GROUP,
    OWNER,
    PAGE,
    browser,
    flash,
    new_context,
    seed_pages,
    sign_in,
)

#: The subject is the page, not the database: PostgreSQL only.
UNWANTED_COMBINATIONS = [{"database_backend": "sqlite"}]


def _row_images(page: Page) -> list[str]:
    return [
        text.strip() for text in page.locator("#dependency-proxy-images td.image").all_inner_texts()
    ]


@pytest.mark.e2e
def test_owner_sees_what_the_cache_saved_orders_filters_and_deletes_one_image(
    browser: Browser,  # noqa: F811
    platform_factory: PlatformFactory,
    upstream: Registry,
    skopeo: Skopeo,
    unique_name: str,
    tmp_path: Path,
) -> None:
    """Two images pulled with skopeo (one of them twice): the chart and hit ratio show the
    group's usage figures; the list orders by size and by last pull and filters by name;
    one image deleted after a confirmation is gone after cleanup, and its next pull goes
    to upstream again."""
    live = platform_factory(
        upstream.url,
        setup=seed_pages,
        # One worker holds the usage buffer; every pull rewrites the last-read time.
        workers=1,
        extra_env={
            "DEPENDENCY_PROXY_CLEANUP_FILE_GRACE_SECONDS": "0",
            "DEPENDENCY_PROXY_READ_TIME_GRANULARITY_SECONDS": "0",
        },
    )
    tiny_repo, huge_repo = f"pages/tiny-{unique_name}", f"pages/huge-{unique_name}"
    tiny = images.push(
        images.build_image(f"{unique_name}-t", layer_sizes=(20_000,)),
        upstream,
        tiny_repo,
        "1.0",
        workdir=tmp_path / "tiny",
    )
    images.push(
        images.build_image(f"{unique_name}-h", layer_sizes=(150_000, 250_000)),
        upstream,
        huge_repo,
        "1.0",
        workdir=tmp_path / "huge",
    )
    context = new_context(browser, live)
    page = context.new_page()
    page.goto(PAGE)
    sign_in(page, OWNER)
    page.wait_for_url(f"**{PAGE}")
    expect(page.locator("#dependency-proxy-hit-ratio")).to_contain_text("no pulls yet")
    page.click("text=Enable the Dependency Proxy")

    prefix = f"{live.host}/{GROUP}/dependency_proxy/containers"
    checks.ok(skopeo.login(live.host, OWNER.username, OWNER.password))
    for repository in (tiny_repo, huge_repo, tiny_repo):  # the last one from the cache
        checks.ok(skopeo.copy_to_dir(f"{prefix}/{repository}:1.0")[0])
    # Counters and last-read times are written in batches, by the next registry request
    # once their interval has passed.
    time.sleep(FLUSH_SECONDS + 0.5)
    headers = live.bearer(OWNER.username, OWNER.password, GROUP, tiny_repo)
    manifest_url = f"{live.url}/v2/{live.repository(GROUP, tiny_repo)}/manifests/1.0"
    assert requests.head(manifest_url, headers=headers, timeout=30).ok

    page.reload()
    usage = context.request.get(f"/api/v4/groups/{GROUP}/dependency_proxy/usage").json()
    assert usage["pulls_cached"] >= 1 and usage["pulls_upstream"] >= 2, usage
    ratio = (
        f"{usage['pulls_cached'] / (usage['pulls_cached'] + usage['pulls_upstream']) * 100:.1f} %"
    )
    chart = page.locator("svg#dependency-proxy-usage-chart")
    expect(chart).to_be_visible()
    label = chart.get_attribute("aria-label") or ""
    assert (
        f"{usage['pulls_cached']} pulls served from the cache,"
        f" {usage['pulls_upstream']} fetched upstream, hit ratio {ratio}"
    ) in label, label
    assert human_size(usage["bytes_saved"]) in label and usage["bytes_saved"] > 0
    expect(chart.locator("rect title")).not_to_have_count(0)
    expect(page.locator("#dependency-proxy-hit-ratio")).to_contain_text(f"hit ratio {ratio}")

    # Newest first, then by size (largest first, then smallest), then by last pull.
    assert _row_images(page) == [huge_repo, tiny_repo]
    page.click("#dependency-proxy-sort-size")
    expect(page.locator("th[data-sort-key=size]")).to_have_attribute("aria-sort", "descending")
    assert _row_images(page) == [huge_repo, tiny_repo]
    page.click("#dependency-proxy-sort-size")
    expect(page.locator("th[data-sort-key=size]")).to_have_attribute("aria-sort", "ascending")
    assert _row_images(page) == [tiny_repo, huge_repo]
    page.click("#dependency-proxy-sort-last_pulled")
    expect(page.locator("th[data-sort-key=last_pulled]")).to_have_attribute(
        "aria-sort", "descending"
    )
    assert _row_images(page) == [tiny_repo, huge_repo]
    page.click("#dependency-proxy-sort-last_pulled")
    expect(page.locator("th[data-sort-key=last_pulled]")).to_have_attribute(
        "aria-sort", "ascending"
    )
    assert _row_images(page) == [huge_repo, tiny_repo]

    page.fill("#dependency-proxy-search", "tiny")
    page.click("#dependency-proxy-filter button[type=submit]")
    expect(page.locator("#dependency-proxy-images td.image")).to_have_text([tiny_repo])

    # Delete it, with a confirmation page.
    page.click("#dependency-proxy-images a.delete-image")
    expect(page.locator("h1")).to_have_text(
        f"Delete {tiny_repo} from the Dependency Proxy cache of {GROUP}?"
    )
    page.click("#dependency-proxy-confirm-delete-image")
    page.wait_for_url(f"**{PAGE}")
    expect(flash(page)).to_contain_text(
        f"Image {tiny_repo} deleted: 1 manifests and {len(tiny.blob_digests)} blobs"
    )
    cleanup = live.flask("dependency-proxy", "cleanup")
    assert "Deleted 1 manifests" in cleanup.stdout, cleanup.stdout
    page.goto(f"{PAGE}?search=tiny")
    expect(page.locator("#dependency-proxy-no-match")).to_be_visible()
    page.goto(PAGE)
    assert _row_images(page) == [huge_repo]
    for digest in tiny.blob_digests:
        assert live.store_files_for(digest) == [], digest

    # The next pull fetches it from upstream again.
    mark = upstream.mark()
    checks.ok(skopeo.copy_to_dir(f"{prefix}/{tiny_repo}:1.0")[0])
    assert upstream.count("GET", repository=tiny_repo, kind="manifests", since=mark) == 1
    assert upstream.count("GET", repository=tiny_repo, kind="blobs", since=mark) == len(
        tiny.blob_digests
    )
    page.reload()
    assert sorted(_row_images(page)) == sorted([huge_repo, tiny_repo])
    context.close()
