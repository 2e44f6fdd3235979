"""The documentation builds with warnings as errors: a broken reference, a missing
docstring the configuration page needs, a file the quickstart includes that moved, or a
README link the docs cannot follow fails the suite."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_docs_build_without_warnings(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "sphinx",
            "-W",
            "--keep-going",
            "-q",
            "-b",
            "html",
            str(ROOT / "docs"),
            str(tmp_path / "html"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    quickstart = (tmp_path / "html" / "quickstart.html").read_text()
    # examples/minimal/app.py, included verbatim (highlighted, so split in spans).
    assert '<span class="nc">Host</span>' in quickstart
    configuration = (tmp_path / "html" / "configuration.html").read_text()
    assert "DEPENDENCY_PROXY_LOGIN_VIEW" in configuration
    assert "DEPENDENCY_PROXY_METRICS_TOKEN" in configuration
    # The production, scaling-out, clients and upstreams pages are the README's sections,
    # with GitHub's links turned into links between the pages.
    production = (tmp_path / "html" / "production.html").read_text()
    assert (
        "DEPENDENCY_PROXY_BLOB_CHUNK_SIZE" in production and 'id="object-storage-s3"' in production
    )
    scaling = (tmp_path / "html" / "scaling.html").read_text()
    assert 'href="production.html#object-storage-s3"' in scaling
    clients = (tmp_path / "html" / "clients.html").read_text()
    assert "registries.conf" in clients and "hosts.toml" in clients
    assert 'href="upstreams.html"' in clients
    assert "CI_DEPENDENCY_PROXY_GROUP_IMAGE_PREFIX" in clients
    assert "DEPENDENCY_PROXY_UPSTREAMS" in (tmp_path / "html" / "upstreams.html").read_text()
