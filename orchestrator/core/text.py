"""Untrusted text made safe for the place it is printed: a terminal, Markdown, HTML.

Names, labels and descriptions come from YAML files anyone with commit access can
edit; deployment names, health reasons and log lines come from devices. None of it
may forge output: a newline must not start a new table row, an ANSI escape must
not recolour or erase the terminal, ``<script>`` must not run in a report.

- :func:`terminal`: control characters (C0, C1, DEL, ANSI escape sequences, bidi
  overrides, line separators) shown as visible escapes (``\\x1b``, ``\\n``,
  ``\\u202e``), so one value is always one line;
- :func:`md_text` / :func:`md_code`: Markdown text and code spans, safe inside a
  table cell (``|`` and newlines) and with HTML escaped;
- :func:`html`: HTML text (the Jinja environments of HTML reports autoescape; this
  is for code that writes HTML itself).
"""

from __future__ import annotations

import html as _html
import re
import unicodedata
from typing import Any

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(ch: str) -> bool:
    # Cc: C0/C1 controls and DEL (ESC starts every ANSI sequence); Cf: format characters
    # (bidi overrides, zero-width joiners); Zl/Zp: line and paragraph separators
    return unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def _visible(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def terminal(value: Any, keep_newlines: bool = False) -> str:
    """``value`` as one line of terminal text: every control character a visible escape.

    With ``keep_newlines`` the newlines of a multi-line message stay (each of its lines
    is still made safe).
    """
    text = str(value)
    if keep_newlines:
        return "\n".join(terminal(line) for line in text.split("\n"))
    if text.isprintable():
        return text
    return "".join(_visible(ch) if _unsafe(ch) else ch for ch in text)


# always escaped; "_" only where it could open or close emphasis (not inside a word)
_MD_SPECIAL = re.compile(r"([\\`*\[\]|~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")
# what would start a heading, list item or setext underline at the start of a line
_MD_LINE_START = re.compile(
    r"^(\s*)(#{1,6}(?=\s|$)|[-+](?=\s|$)|\d{1,9}[.)](?=\s|$)|=+\s*$|-+\s*$)"
)


def _one_line(text: str) -> str:
    """Newlines and other line breaks as spaces; other control characters as visible escapes."""
    text = re.sub(r"\r\n|[\r\n\u2028\u2029\x0b\x0c\x85]", " ", text)
    return terminal(text)


def md_text(value: Any) -> str:
    """``value`` as inline Markdown text: no HTML, no emphasis or links, safe in a table cell.

    HTML special characters become entities, Markdown punctuation is backslash-escaped,
    line breaks become spaces, and a leading ``#``, ``-``, ``+``, ``>``, ``=`` or ``1.``
    cannot start a heading, list or quote.
    """
    text = _html.escape(_one_line(str(value)), quote=False)
    text = _MD_SPECIAL.sub(r"\\\1", text)
    return _MD_LINE_START.sub(_escape_line_start, text, count=1)


def _escape_line_start(m: re.Match[str]) -> str:
    marker = m.group(2)
    if marker[0].isdigit():  # "1." -> "1\." (a backslash before a digit escapes nothing)
        return m.group(1) + marker[:-1] + "\\" + marker[-1]
    return m.group(1) + "\\" + marker


def md_code(value: Any) -> str:
    """``value`` as a Markdown code span (backticks included), safe in a table cell.

    The fence is longer than any run of backticks in the value; ``|`` is escaped (GitHub
    tables split cells on it even inside code spans); line breaks become spaces.
    """
    text = _one_line(str(value)).replace("|", "\\|")
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text.strip() else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def html(value: Any) -> str:
    """``value`` as HTML text (quotes escaped too, so it is safe in an attribute)."""
    return _html.escape(str(value), quote=True)
