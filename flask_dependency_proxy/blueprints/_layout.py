"""How the pages sit in the host's layout: the wrapper template between a page and the
host's base template, and the Content-Security-Policy nonce of the request.

Jinja names a block only in the template's text, so the block the extension's style
goes into (``DEPENDENCY_PROXY_HEAD_BLOCK``) cannot be a variable of a shipped template.
The pages extend ``dependency_proxy/_layout/<block>.html`` instead, a template this
module writes for the block name in its own name: it extends the host's base template
and fills that one block with the block's own content (``super()``), the style and the
page's ``dependency_proxy_head`` block. ``title`` and ``content`` of a page pass through
it to the base template unchanged.
"""

from __future__ import annotations

import re
import typing as t

from flask import g

from .._state import state

#: Where the wrapper templates live, one per head block name.
LAYOUT_PREFIX = "dependency_proxy/_layout/"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_LAYOUT = """{{#- Written by flask_dependency_proxy.blueprints._layout for the block {block}. -#}}
{{% extends base_template %}}
{{% block {block} %}}{{{{ super() }}}}{{% include "dependency_proxy/_style.html" %}}
{{% block dependency_proxy_head %}}{{% endblock %}}{{% endblock %}}
"""


def layout_source(name: str) -> str | None:
    """The wrapper template ``dependency_proxy/_layout/<block>.html`` (a Jinja
    ``FunctionLoader`` function); ``None`` for any other name."""
    if not name.startswith(LAYOUT_PREFIX) or not name.endswith(".html"):
        return None
    block = name[len(LAYOUT_PREFIX) : -len(".html")]
    if not _NAME.fullmatch(block) or block in ("title", "content"):
        return None
    return _LAYOUT.format(block=block)


def csp_nonce() -> str | None:
    """The nonce of the current request: ``DEPENDENCY_PROXY_CSP_NONCE``'s answer, else
    ``g.csp_nonce``; ``None`` (no ``nonce`` attribute) when neither has one."""
    source = state(None).config.csp_nonce
    nonce = source() if source is not None else getattr(g, "csp_nonce", None)
    return str(nonce) if nonce else None


def page_context() -> dict[str, t.Any]:
    """What every page template gets to sit in the host's layout."""
    config = state(None).config
    return {
        "base_template": config.base_template,
        "proxy_layout": f"{LAYOUT_PREFIX}{config.head_block}.html",
        "csp_nonce": csp_nonce(),
    }
