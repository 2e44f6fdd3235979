"""The import rule (docs/architecture.rst) holds: imports go only downward, and only the
HTTP and CLI layers (and the composition root that wires them) look up the app's state.

The contracts live in ``pyproject.toml`` under ``[tool.importlinter]``, where
``lint-imports`` reads them; these tests run the same check in the test process, so a
cycle, an upward import or a new ``state()`` caller fails the suite with the imports to
remove listed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from importlinter import configuration
from importlinter.application import use_cases

ROOT = Path(__file__).resolve().parent.parent


def _broken_imports(contract: str, capsys: pytest.CaptureFixture[str]) -> str | None:
    """Run one contract of ``pyproject.toml`` as ``lint-imports`` does; ``None`` when it
    is kept, else the report, which names every import that breaks it. (The command's
    own entry point would also reconfigure logging for the whole test process.)"""
    configuration.configure()
    capsys.readouterr()
    kept = use_cases.lint_imports(
        config_filename=str(ROOT / "pyproject.toml"),
        limit_to_contracts=(contract,),
        cache_dir=None,
        no_logo=True,
    )
    report = capsys.readouterr()
    return None if kept else report.out + report.err


def test_imports_go_only_downward(capsys: pytest.CaptureFixture[str]) -> None:
    broken = _broken_imports("layers", capsys)
    if broken is not None:
        pytest.fail(f"Imports against the layers of the package:\n{broken}", pytrace=False)


def test_only_the_http_and_cli_layers_look_up_the_app_state(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Below ``blueprints/`` and ``cli.py`` every module is handed what it needs by
    ``extension.py``; none reaches for ``_state``."""
    broken = _broken_imports("state-lookup", capsys)
    if broken is not None:
        pytest.fail(f"Modules that look up the app's state:\n{broken}", pytrace=False)
