"""README sections as documentation pages, without copies that drift.

A page shows the part of ``README.md`` between ``<!-- docs:NAME:begin -->`` and
``<!-- docs:NAME:end -->``, parsed as Markdown by MyST::

    .. readme-section:: production

NAME is also the page's own name. The README's links are written for GitHub, relative
to the repository. Before the part is parsed, they are rewritten for the docs: a link
to a heading (``#scaling-out``) points at the page that includes that heading (or stays
an anchor of the same page), an image is found from the docs folder, and a link to
another file of the repository keeps only its text (the docs are published without the
repository). A link to a heading no page includes is a warning, so the build fails with
``-W``.
"""

from __future__ import annotations

import os
import re
import typing as t
from pathlib import Path

from docutils import nodes
from docutils.utils import new_document
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

log = logging.getLogger(__name__)

_MARKER = re.compile(r"<!-- docs:(?P<page>[a-z0-9_-]+):(?P<edge>begin|end) -->")
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
#: ``[text](target)`` and ``![alt](target)``; text without nested brackets.
_LINK = re.compile(r"(?P<bang>!?)\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")
_FENCE = re.compile(r"^\s*(```|~~~)")


def github_slug(title: str) -> str:
    """The anchor GitHub gives a heading: lowercase, punctuation dropped, spaces to ``-``."""
    text = re.sub(r"`|\*\*|__", "", title).strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


class Place(t.NamedTuple):
    """Where a README heading is in the docs."""

    page: str
    #: The heading is the page's title (it stands just before the begin marker).
    title: bool


def heading_pages(readme: str) -> dict[str, Place]:
    """Which page holds each heading's anchor."""
    pages: dict[str, Place] = {}
    current: str | None = None
    previous: str | None = None
    in_fence = False
    for line in readme.splitlines():
        if _FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        marker = _MARKER.search(line)
        if marker:
            if marker["edge"] == "begin":
                current = marker["page"]
                if previous is not None:
                    pages.setdefault(previous, Place(current, title=True))
            else:
                current = None
            previous = None
            continue
        heading = _HEADING.match(line)
        if heading:
            previous = github_slug(heading[2])
            if current is not None:
                pages.setdefault(previous, Place(current, title=False))
        elif line.strip():
            previous = None
    return pages


def shift_headings(text: str) -> str:
    """``text`` with its shallowest headings made level 1: a part of the README starts
    below its page's title, and MyST wants a document to start at level 1."""
    lines = text.splitlines(keepends=True)
    levels: list[int] = []
    in_fence = False
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (heading := _HEADING.match(line)):
            levels.append(len(heading[1]))
    if not levels or min(levels) == 1:
        return text
    drop = min(levels) - 1
    out: list[str] = []
    in_fence = False
    for line in lines:
        if _FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and _HEADING.match(line):
            line = line[drop:]
        out.append(line)
    return "".join(out)


def rewrite_links(text: str, page: str, pages: dict[str, Place], docs: Path, root: Path) -> str:
    """``text`` (a part of the README included by ``page``) with links fit for the docs."""

    def replace(match: re.Match[str]) -> str:
        bang, label, target = match["bang"], match["text"], match["target"]
        if re.match(r"[a-z][a-z0-9+.-]*:", target):
            return match[0]  # https:, mailto:, ...
        if target.startswith("#"):
            anchor = target[1:]
            if anchor not in pages:
                log.warning("README links to #%s, a heading no docs page includes", anchor)
                return label
            place = pages[anchor]
            if place.page == page and not place.title:
                return match[0]
            if place.title:
                return f"[{label}]({place.page}.rst)"
            return f"[{label}]({place.page}.rst#{anchor})"
        path, _, fragment = target.partition("#")
        if bang:
            image = (root / path).resolve()
            if not image.is_file():
                log.warning("README shows %s, which does not exist", path)
                return match[0]
            return f"![{label}]({os.path.relpath(image, docs.resolve())})"
        return label

    out: list[str] = []
    in_fence = False
    for line in text.splitlines(keepends=True):
        if _FENCE.match(line):
            in_fence = not in_fence
        out.append(line if in_fence else _LINK.sub(replace, line))
    return "".join(out)


class ReadmeSection(SphinxDirective):
    """The README's part named by the argument, links rewritten, parsed by MyST."""

    required_arguments = 1

    def run(self) -> list[nodes.Node]:
        from myst_parser.parsers.sphinx_ import MystParser

        name = self.arguments[0]
        readme = Path(self.env.srcdir).parent / "README.md"
        self.env.note_dependency(str(readme))
        text = readme.read_text(encoding="utf-8")
        begin, end = f"<!-- docs:{name}:begin -->", f"<!-- docs:{name}:end -->"
        if text.count(begin) != 1 or text.count(end) != 1:
            raise self.error(f"README.md needs one {begin} and one {end}")
        part = text.split(begin, 1)[1].split(end, 1)[0]
        page = self.env.docname.rsplit("/", 1)[-1]
        part = rewrite_links(part, page, heading_pages(text), Path(self.env.srcdir), readme.parent)
        document = new_document(str(readme), self.state.document.settings)
        MystParser().parse(shift_headings(part), document)
        return list(document.children)


def setup(app: Sphinx) -> dict[str, t.Any]:
    app.setup_extension("myst_parser")
    app.add_directive("readme-section", ReadmeSection)
    return {"parallel_read_safe": True}
