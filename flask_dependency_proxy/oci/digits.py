"""Whole numbers read from requests and from upstream's headers: ASCII digits only.

``str.isdigit()`` is true for ``²`` (which ``int()`` then refuses) and ``int()`` takes
``١٢`` and full-width ``１２``; a number a client or an upstream sends is ``0``-``9`` or
it is not a number.
"""

from __future__ import annotations

import re

_DIGITS = re.compile(r"[0-9]+")


def ascii_int(text: str | None, *, max_digits: int = 18) -> int | None:
    """The value of ``text`` when it is 1 to ``max_digits`` ASCII digits, else ``None``."""
    if text is None or len(text) > max_digits or not _DIGITS.fullmatch(text):
        return None
    return int(text)
