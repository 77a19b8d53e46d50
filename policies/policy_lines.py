"""Where each key of a TOML policy file is: so that a schema error names its line.

``tomllib`` reports the line of a syntax error but keeps no positions for a valid document; the
schema's errors name a path (``prompt.categories.2.threshold``). :func:`key_lines` scans the text
once (it is valid TOML by then) and maps every path it sees — table headers, ``[[array]]``
entries, ``key =`` lines, dotted keys, array elements and inline-table keys — to its line.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

Path = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s, self.i, self.line = text, 0, 1
        self.lines: dict[Path, int] = {}
        self.arrays: dict[Path, int] = {}

    # -- characters --------------------------------------------------------------------------

    def _peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def _advance(self, n: int = 1) -> None:
        self.line += self.s.count("\n", self.i, self.i + n)
        self.i += n

    def _blank(self, newlines: bool) -> None:
        """Skip spaces (and newlines and comments when ``newlines``)."""
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self._advance()
            elif c == "#" and newlines:
                end = self.s.find("\n", self.i)
                self._advance((len(self.s) if end < 0 else end) - self.i)
            else:
                return

    def _string(self) -> str:
        for quote in ('"""', "'''"):
            if self._peek(3) == quote:
                end = self.s.find(quote, self.i + 3)
                while self.s[end + 3 : end + 4] == quote[0]:  # up to two quotes may close it
                    end += 1
                text = self.s[self.i + 3 : end]
                self._advance(end + 3 - self.i)
                return text
        quote = self._peek()
        j = self.i + 1
        while self.s[j] != quote:
            j += 2 if quote == '"' and self.s[j] == "\\" else 1
        text = self.s[self.i + 1 : j]
        self._advance(j + 1 - self.i)
        return text

    def _key(self) -> tuple[str, ...]:
        """A dotted key: ``a.b``, ``"quoted".c``."""
        parts: list[str] = []
        while True:
            self._blank(newlines=False)
            if self._peek() in ('"', "'"):
                parts.append(self._string())
            else:
                m = _BARE_KEY.match(self.s, self.i)
                if m is None:
                    return tuple(parts)
                parts.append(m.group(0))
                self._advance(m.end() - self.i)
            self._blank(newlines=False)
            if self._peek() != ".":
                return tuple(parts)
            self._advance()

    # -- structure ---------------------------------------------------------------------------

    def _mark(self, path: Path, line: int) -> None:
        for k in range(1, len(path)):  # a table's parents exist from their first mention on
            self.lines.setdefault(path[:k], line)
        self.lines[path] = line

    def _value(self, path: Path) -> None:
        c = self._peek()
        if c == "[":
            self._advance()
            index = 0
            while True:
                self._blank(newlines=True)
                if self._peek() == "]":
                    self._advance()
                    return
                self._mark((*path, index), self.line)
                self._value((*path, index))
                self._blank(newlines=True)
                if self._peek() == ",":
                    self._advance()
                    index += 1
        elif c == "{":
            self._advance()
            while True:
                self._blank(newlines=False)
                if self._peek() == "}":
                    self._advance()
                    return
                if self._peek() == ",":
                    self._advance()
                    continue
                line, key = self.line, self._key()
                self._mark((*path, *key), line)
                self._blank(newlines=False)
                self._advance()  # "="
                self._blank(newlines=False)
                self._value((*path, *key))
        elif c in ('"', "'"):
            self._string()
        else:  # number, boolean, date: up to the next separator
            m = re.compile(r"[^,\]\}\n#]*").match(self.s, self.i)
            self._advance((m.end() if m else self.i) - self.i)

    def scan(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self._blank(newlines=True)
            if self.i >= len(self.s):
                return self.lines
            line = self.line
            if self._peek(2) == "[[":
                self._advance(2)
                name = self._key()
                self._advance(2)
                n = self.arrays.get(name, 0)
                self.arrays[name] = n + 1
                table = (*name, n)
                self._mark(table, line)
            elif self._peek() == "[":
                self._advance()
                name = self._key()
                self._advance()
                table = name
                self._mark(table, line)
            else:
                key = self._key()
                self._mark((*table, *key), line)
                self._blank(newlines=False)
                self._advance()  # "="
                self._blank(newlines=False)
                self._value((*table, *key))


def key_lines(text: str) -> dict[Path, int]:
    """Each path of a valid TOML document -> the 1-based line where it is written."""
    return _Scanner(text).scan()


def line_of(lines: dict[Path, int], location: Sequence[str | int]) -> int | None:
    """The line of ``location``, or of its closest written parent (a missing key's table)."""
    path = tuple(location)
    while path:
        if path in lines:
            return lines[path]
        path = path[:-1]
    return None
