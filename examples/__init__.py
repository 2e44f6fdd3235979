"""Runnable examples of hosting flask-dependency-proxy.

:mod:`examples.platform` is a small git platform (users, nested groups, tokens,
CI jobs) that embeds the extension the way a real host would.
"""
