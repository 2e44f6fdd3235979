"""Runnable examples of hosting flask-dependency-proxy.

:mod:`examples.platform` is a small git platform (users, nested groups, tokens,
CI jobs) that embeds the extension the way a real host would; :mod:`examples.forge` is
a forge built like Pagure (plain SQLAlchemy, a strict CSP, mixed-case groups that get
deleted); :mod:`examples.minimal` is a whole host in one file.
"""
