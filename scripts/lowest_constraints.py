"""Write a pip constraints file that pins every declared floor exactly.

    python scripts/lowest_constraints.py OUT [--extra NAME ...] [--also PACKAGE ...]

Reads ``setup.cfg``: each ``name>=X`` of ``install_requires`` (and of the named extras)
becomes ``name==X``; ``--also PACKAGE`` pins a package at the floor another extra
declares (e.g. ``flask-login``, which the example host needs). ``scripts/test`` installs
with it into a fresh virtualenv, so the lowest-versions lane always tests exactly the
floors ``setup.cfg`` declares. Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import argparse
import configparser
import re
import sys
from pathlib import Path

SETUP_CFG = Path(__file__).resolve().parents[1] / "setup.cfg"
#: ``name[extras] >= version`` (other clauses after a comma are ignored: the floor is
#: what is tested).
_FLOOR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)")


def _lines(value: str) -> list[str]:
    return [
        line.strip() for line in value.splitlines() if line.strip() and not line.startswith("#")
    ]


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def floors(config: configparser.ConfigParser, extras: list[str], also: list[str]) -> dict[str, str]:
    """``{package: floor}`` for ``install_requires``, the extras named, and ``also``.

    :raises SystemExit: for a requirement there without a ``>=`` floor, an unknown
        extra, or an ``also`` package no extra declares.
    """
    options = config["options"]
    declared = {name: _lines(value) for name, value in config["options.extras_require"].items()}
    wanted = _lines(options.get("install_requires", ""))
    for extra in extras:
        if extra not in declared:
            sys.exit(f"setup.cfg declares no extra {extra!r}")
        wanted += declared[extra]
    pins: dict[str, str] = {}
    for requirement in wanted:
        match = _FLOOR.match(requirement)
        if match is None:
            sys.exit(f"setup.cfg: {requirement!r} declares no '>=' floor to test")
        pins[_normal(match.group(1))] = match.group(2)
    everything = [line for lines in declared.values() for line in lines]
    for package in also:
        found = [m for line in everything if (m := _FLOOR.match(line))]
        floor = next((m.group(2) for m in found if _normal(m.group(1)) == _normal(package)), None)
        if floor is None:
            sys.exit(f"setup.cfg declares no floor for {package!r}")
        pins[_normal(package)] = floor
    return pins


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--extra", action="append", default=[])
    parser.add_argument("--also", action="append", default=[])
    args = parser.parse_args(argv)
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    pins = floors(config, args.extra, args.also)
    args.out.write_text("".join(f"{name}=={version}\n" for name, version in sorted(pins.items())))


if __name__ == "__main__":
    main()
