"""ANSI colour for the command line's output, on terminals only (shared by ``cli`` and ``demo``).

Colour is off when the stream is not a TTY, when ``NO_COLOR`` is set
(https://no-color.org/) or when ``TERM=dumb``.
"""

from __future__ import annotations

import os
from typing import TextIO

__all__ = ["Style"]


class Style:
    """ANSI colour for terminals only."""

    def __init__(self, stream: TextIO) -> None:
        self.on = stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    def _wrap(self, code: str, text: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.on else text

    def green(self, text: str) -> str:
        return self._wrap("32", text)

    def red(self, text: str) -> str:
        return self._wrap("31", text)

    def yellow(self, text: str) -> str:
        return self._wrap("33", text)

    def bold(self, text: str) -> str:
        return self._wrap("1", text)
