"""``.. dependency-proxy-config::``: every configuration key with its default and the
``#:`` comment above its field of ``ProxyConfig`` in ``flask_dependency_proxy/config/keys.py``,
so the documentation cannot drift from the code."""

from __future__ import annotations

import dataclasses

from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.pycode import ModuleAnalyzer
from sphinx.util.docutils import SphinxDirective

from flask_dependency_proxy.config import keys


class ConfigTable(SphinxDirective):
    def run(self) -> list[nodes.Node]:
        comments = ModuleAnalyzer.for_module(keys.__name__).find_attr_docs()
        entries = nodes.definition_list()
        for field in dataclasses.fields(keys.ProxyConfig):
            lines = comments.get(("ProxyConfig", field.name))
            if not lines:
                raise self.error(f"ProxyConfig.{field.name} has no #: comment to document it")
            term = nodes.term()
            term += nodes.literal(text=keys.env_key(field))
            term += nodes.Text(f" = {field.metadata['default']!r}")
            definition = nodes.definition()
            self.state.nested_parse(StringList(list(lines)), self.content_offset, definition)
            item = nodes.definition_list_item()
            item += term
            item += definition
            entries += item
        return [entries]


def setup(app: Sphinx) -> dict[str, bool]:
    app.add_directive("dependency-proxy-config", ConfigTable)
    return {"parallel_read_safe": True}
