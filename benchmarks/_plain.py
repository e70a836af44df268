"""Plain-text stand-ins for rich's Console and Table, for machines without rich."""

from __future__ import annotations


class Table:
    def __init__(self, title: str = "") -> None:
        self.title, self.columns, self.rows = title, [], []

    def add_column(self, name: str, **_) -> None:
        self.columns.append(name)

    def add_row(self, *cells: str) -> None:
        self.rows.append(cells)

    def __str__(self) -> str:
        lines = [self.title, " | ".join(self.columns)]
        return "\n".join(lines + [" | ".join(r) for r in self.rows])


class Console:
    def __init__(self, **_) -> None:
        pass

    def print(self, obj) -> None:
        print(obj, flush=True)
