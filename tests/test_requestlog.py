"""The request log's line formats."""

from __future__ import annotations

import json

from flask_dependency_proxy.blueprints._requestlog import format_line

FIELDS = {
    "method": "GET",
    "route": "manifest",
    "status": 200,
    "group": "acme/platform",
    "image": "library/alpine",
    "reference": "3.20",
    "outcome": "hit",
    "bytes": 1234,
    "upstream_status": None,
    "client": "10.0.0.7",
    "duration_ms": 3.5,
}


def test_key_value_pairs_with_a_dash_for_none() -> None:
    assert format_line(FIELDS, "keyvalue") == (
        "method=GET route=manifest status=200 group=acme/platform image=library/alpine"
        " reference=3.20 outcome=hit bytes=1234 upstream_status=- client=10.0.0.7"
        " duration_ms=3.5"
    )


def test_values_that_could_break_a_pair_are_quoted() -> None:
    line = format_line(
        {"image": 'a b"c', "group": "x=y", "client": "\n", "reference": ""}, "keyvalue"
    )
    assert line == r'image="a b\"c" group="x=y" client="\n" reference=""'


def test_json_is_one_object_per_line() -> None:
    line = format_line(FIELDS, "json")
    assert "\n" not in line
    assert json.loads(line) == FIELDS
