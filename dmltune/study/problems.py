"""Independent problems of a study, collected so that one pass of ``validate`` (or ``run``) lists
them all, one line each, instead of stopping at the first.

    problems = Problems()
    with problems.collect():        # a ConfigError inside is recorded, and the code after the block runs
        check_seeds(seeds)
    with problems.collect():
        check_storage(storage, name)
    problems.raise_if_any()         # one ConfigError, or ConfigErrors listing each

Each ``collect`` block must be independent of the others: a block whose input is broken by an
earlier problem is skipped by the caller (``problems.attempt`` says whether it passed), not reported again.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ..registry import ConfigError, ConfigErrors


class Problems:
    """ConfigErrors collected in order, each distinct line once (arms that share a broken shared
    section report the same line)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def add(self, err: ConfigError) -> None:
        for line in err.lines:
            if line not in self.lines:
                self.lines.append(line)

    @contextmanager
    def collect(self) -> Iterator[None]:
        """Run the block; a ConfigError it raises is recorded instead of propagated."""
        try:
            yield
        except ConfigError as err:
            self.add(err)

    def attempt(self, block, *args):
        """``(True, block(*args))``, or ``(False, None)`` with its ConfigError recorded."""
        try:
            return True, block(*args)
        except ConfigError as err:
            self.add(err)
            return False, None

    def __bool__(self) -> bool:
        return bool(self.lines)

    def raise_if_any(self) -> None:
        if len(self.lines) == 1:
            raise ConfigError(self.lines[0])
        if self.lines:
            raise ConfigErrors([ConfigError(line) for line in self.lines])
