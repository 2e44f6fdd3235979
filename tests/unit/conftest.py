"""Fixtures of the unit tests: the cache's core in the test process (:mod:`tests.support.core`)."""

from __future__ import annotations

import typing as t
from pathlib import Path

import pytest

from tests.support.core import Core, build_core, migrated_database


@pytest.fixture(scope="session")
def core_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The extension's tables in an SQLite file, migrated once for the session."""
    return migrated_database(tmp_path_factory.mktemp("core-template") / "template.sqlite")


@pytest.fixture
def make_core(core_template: Path, tmp_path: Path) -> t.Iterator[t.Callable[..., Core]]:
    """Build one core for the test with :func:`~tests.support.core.build_core`'s options;
    its app context is pushed until the test ends."""
    built: list[tuple[Core, t.Any]] = []

    def make(**options: t.Any) -> Core:
        if built:
            raise AssertionError("one core per test")
        core = build_core(tmp_path, core_template, **options)
        context = core.app.app_context()
        context.push()
        built.append((core, context))
        return core

    yield make
    for core, context in built:
        try:
            core.close()
        finally:
            context.pop()
