"""``INSERT ... ON CONFLICT`` for the two databases the package runs on.

The dialect modules are imported with this module, when the app starts, rather than at
a worker's first write: importing them takes 150-275 ms, which on a gevent worker would
stall every client of the worker.
"""

from __future__ import annotations

import typing as t

from sqlalchemy.dialects import postgresql, sqlite


def insert_for(dialect_name: str) -> t.Any:
    """The dialect's ``insert`` construct, which has ``on_conflict_do_update``."""
    return postgresql.insert if dialect_name == "postgresql" else sqlite.insert
