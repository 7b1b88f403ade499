"""MkDocs hook: render the docstrings' ``.. versionadded::`` lines as notes.

mkdocstrings parses Google-style docstrings, which have no version directive,
so the line would otherwise show up as literal text in the API reference.
"""

from __future__ import annotations

import re

_VERSION_ADDED = re.compile(r"<p>\.\. versionadded:: ([^<\s]+)</p>")


def on_page_content(html: str, **_: object) -> str:
    return _VERSION_ADDED.sub(r"<p><em>Added in version \1.</em></p>", html)
