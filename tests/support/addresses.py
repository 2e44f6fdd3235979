"""HTTP clients that connect from a chosen loopback address: all of 127.0.0.0/8 is
local, so one machine can play several client addresses (login throttling, reverse
proxies)."""

from __future__ import annotations

import typing as t

import requests
from requests.adapters import HTTPAdapter


class _FromAddress(HTTPAdapter):
    """Connects from a given loopback address (all of 127.0.0.0/8 is local)."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__()

    def init_poolmanager(self, *args: t.Any, **kwargs: t.Any) -> None:
        kwargs["source_address"] = (self.address, 0)
        super().init_poolmanager(*args, **kwargs)


def client_at(address: str) -> requests.Session:
    """A session whose connections come from ``address``.

    Pass ``verify=`` on each request: requests lets ``REQUESTS_CA_BUNDLE`` override a
    session's own ``verify``.
    """
    session = requests.Session()
    adapter = _FromAddress(address)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
