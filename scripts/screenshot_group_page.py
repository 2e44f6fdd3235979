"""Take the README's screenshot of the group page: ``python scripts/screenshot_group_page.py``.

Starts a throwaway upstream registry and the example platform (SQLite, one gunicorn
worker) with the test suite's helpers, pulls three images through the group with skopeo,
adds 30 days of usage counters so the chart has a month to show, and saves the page as
rendered by Debian's Chromium to ``docs/images/group-page.png`` (or the path given).
"""

from __future__ import annotations

import datetime as dt
import random
import sys
import tempfile
from pathlib import Path

import sqlalchemy as sa
from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import checks, images  # noqa: E402
from tests.support.clients import Skopeo  # noqa: E402
from tests.support.platform import Platform  # noqa: E402
from tests.support.processes import ProcessFactory  # noqa: E402
from tests.support.registry import Registry  # noqa: E402

GROUP = "acme"
OWNER = ("olivia", "olivia-password-0001")
IMAGES = {
    "library/python": (600_000, 900_000, 400_000),
    "library/alpine": (120_000,),
    "bitnami/redis": (300_000, 250_000),
}


def seed(platform: Platform) -> None:
    platform.init_db()
    platform.create_user(*OWNER)
    platform.create_group(GROUP, private=True)
    platform.add_member(GROUP, OWNER[0], "owner")
    platform.enable_proxy(GROUP)


def add_usage(database_url: str) -> None:
    """A month of plausible counters: most pulls served from the cache."""
    engine = sa.create_engine(database_url)
    today = dt.datetime.now(dt.UTC).date()
    chance = random.Random(13)
    with engine.begin() as connection:
        group_id = connection.execute(
            sa.text("SELECT group_id FROM dependency_proxy_group_settings")
        ).scalar_one()
        connection.execute(
            sa.text("DELETE FROM dependency_proxy_usage_days WHERE group_id = :g"),
            {"g": group_id},
        )
        for back in range(30):
            busy = 0.3 if (today - dt.timedelta(days=back)).weekday() >= 5 else 1.0
            cached = int(chance.randint(40, 120) * busy)
            upstream = chance.randint(0, 12)
            connection.execute(
                sa.text(
                    "INSERT INTO dependency_proxy_usage_days (group_id, day, pulls_cached,"
                    " pulls_upstream, bytes_cached, bytes_upstream)"
                    " VALUES (:g, :d, :pc, :pu, :bc, :bu)"
                ),
                {
                    "g": group_id,
                    "d": today - dt.timedelta(days=back),
                    "pc": cached,
                    "pu": upstream,
                    "bc": cached * chance.randint(30, 90) * 1024 * 1024,
                    "bu": upstream * chance.randint(30, 90) * 1024 * 1024,
                },
            )
    engine.dispose()


def main(target: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="group-page-") as name:
        work = Path(name)
        processes = ProcessFactory(work / "logs")
        try:
            upstream = Registry(processes, work / "upstream").start()
            platform = Platform(
                processes,
                work / "platform",
                database_url=f"sqlite:///{work / 'platform.sqlite'}",
                upstream_url=upstream.url,
                workers=1,
            )
            seed(platform)
            platform.start()
            skopeo = Skopeo(work / "skopeo")
            checks.ok(skopeo.login(platform.host, *OWNER))
            for number, (repository, sizes) in enumerate(IMAGES.items()):
                built = images.build_image(f"screenshot-{number}", layer_sizes=sizes)
                images.push(built, upstream, repository, "latest", workdir=work / f"i{number}")
                reference = f"{platform.host}/{GROUP}/dependency_proxy/containers/{repository}"
                checks.ok(skopeo.copy_to_dir(f"{reference}:latest")[0])
            add_usage(platform.database_url)
            shoot(platform, target)
        finally:
            processes.stop_all()


def shoot(platform: Platform, target: Path) -> None:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(base_url=platform.url, viewport={"width": 1100, "height": 900})
        page.goto("/users/sign_in")
        page.fill("input[name=username]", OWNER[0])
        page.fill("input[name=password]", OWNER[1])
        page.click("main form button[type=submit]")
        page.wait_for_load_state()
        page.goto(f"/groups/{GROUP}/-/dependency_proxy?order_by=size")
        section = page.locator("#dependency-proxy-savings")
        top = section.bounding_box()
        table = page.locator("#dependency-proxy-images").bounding_box()
        assert top is not None and table is not None
        clip = {
            "x": 0,
            "y": max(top["y"] - 16, 0),
            "width": 1100,
            "height": table["y"] + table["height"] - top["y"] + 32,
        }
        target.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(target), clip=clip, full_page=True)
        browser.close()
    print(f"{target}: {target.stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "images" / "group-page.png")
