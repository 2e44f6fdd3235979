"""The documentation builds with warnings as errors: a broken reference, a missing
docstring the configuration page needs, a file the quickstart includes that moved, or a
README link the docs cannot follow fails the suite."""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest
from sphinx.pycode import ModuleAnalyzer

from flask_dependency_proxy.config import keys
from flask_dependency_proxy.host import HostAdapter, TokenAuthenticator

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.process
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
    assert "DEPENDENCY_PROXY_PEER_LISTENER_PORT" in configuration
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
    # The architecture page names every folder of the package.
    architecture = (tmp_path / "html" / "architecture.html").read_text()
    package = ROOT / "flask_dependency_proxy"
    folders = sorted(p.parent.name for p in package.glob("*/__init__.py"))
    assert folders and all(f"{folder}/" in architecture for folder in folders), folders
    # The Pagure recipe is a page of the index, with its plugins file included.
    assert 'href="pagure.html"' in (tmp_path / "html" / "index.html").read_text()
    # So is predictive refresh, with the benchmark's figures.
    assert 'href="refresh.html"' in (tmp_path / "html" / "index.html").read_text()
    assert "40 requests an" in (tmp_path / "html" / "refresh.html").read_text()
    assert '<span class="nc">PagureHost</span>' in (tmp_path / "html" / "pagure.html").read_text()


def test_every_configuration_key_has_a_doc_comment_and_a_default_it_accepts() -> None:
    comments = ModuleAnalyzer.for_module(keys.__name__).find_attr_docs()
    for field in dataclasses.fields(keys.ProxyConfig):
        assert comments.get(("ProxyConfig", field.name)), f"{field.name} has no #: comment"
        default = field.metadata["default"]
        if default is not None:  # None: unset, or filled in by load_config (STORAGE_PATH)
            field.metadata["parse"](keys.env_key(field), default)


def _readme_extension() -> t.Any:
    spec = importlib.util.spec_from_file_location("readme", ROOT / "docs" / "_ext" / "readme.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_links_become_links_between_the_pages(tmp_path: Path) -> None:
    readme = _readme_extension()
    text = (
        "## Serving\n<!-- docs:serving:begin -->\n### Object storage (S3)\n"
        "<!-- docs:serving:end -->\n## Scaling out\n<!-- docs:scaling:begin -->\n"
        "See [S3](#object-storage-s3), [serving](#serving), [the conf](examples/x.py),\n"
        "[Flask](https://flask.palletsprojects.com) and [gone](#not-in-the-docs).\n"
        "```sh\necho [kept](#object-storage-s3)\n```\n<!-- docs:scaling:end -->\n"
    )
    pages = readme.heading_pages(text)
    assert pages["object-storage-s3"] == readme.Place("serving", title=False)
    assert pages["scaling-out"] == readme.Place("scaling", title=True)
    part = text.split("<!-- docs:scaling:begin -->")[1]
    out = readme.rewrite_links(part, "scaling", pages, tmp_path / "docs", tmp_path)
    assert "[S3](serving.rst#object-storage-s3)" in out
    assert "[serving](serving.rst)" in out  # a page's title: the page itself
    assert "[the conf]" not in out and "the conf," in out  # a repository file: text only
    assert "[Flask](https://flask.palletsprojects.com)" in out
    assert "and gone." in out  # no page has it: text only, and a warning fails -W
    assert "echo [kept](#object-storage-s3)" in out  # code is left alone
    assert readme.shift_headings("### A\n#### B\n```\n### not a heading\n```\n") == (
        "# A\n## B\n```\n### not a heading\n```\n"
    )


def test_the_pagure_recipe_keeps_up_with_the_host_adapter() -> None:
    """Pagure is not on PyPI, so CI cannot run the recipe (docs/pagure.rst says what was
    run by hand); its files must at least stay Python, and its adapter must answer every
    method the protocol asks for."""
    recipe = ROOT / "docs" / "recipes" / "pagure"
    files = {path.name: ast.parse(path.read_text()) for path in recipe.iterdir()}
    assert set(files) == {"plugins.cfg", "pagure.cfg", "pagure_wsgi.py"}
    host = next(
        node
        for node in files["plugins.cfg"].body
        if isinstance(node, ast.ClassDef) and node.name == "PagureHost"
    )
    defined = {node.name for node in host.body if isinstance(node, ast.FunctionDef)}
    wanted = {
        name
        for protocol in (HostAdapter, TokenAuthenticator)
        for name, value in vars(protocol).items()
        if callable(value) and not name.startswith("_")
    }
    assert wanted and wanted <= defined, sorted(wanted - defined)
