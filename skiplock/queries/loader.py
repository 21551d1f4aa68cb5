"""Named SQL queries, loaded once from the `.sql` files in `sql/`.

A query starts at a `-- name: NAME` line and runs to the next one. In a source checkout
the files are read from the repository's `sql/` folder; in an installed wheel they are
shipped inside the package as `skiplock/_sql/` (see pyproject.toml).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import LiteralString

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def sql_dir() -> Path:
    """The folder that holds the `.sql` files, installed or in a checkout."""
    here = Path(__file__).resolve().parent.parent  # the skiplock package
    for candidate in (here / "_sql", here.parent / "sql"):
        if (candidate / "schema.sql").exists():
            return candidate
    raise FileNotFoundError(f"skiplock: no sql/ folder beside {here}")


def parse(text: str) -> dict[str, str]:
    """Split a file into {name: query}. Duplicate names are an error."""
    queries: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for m, nxt in zip(matches, [*matches[1:], None], strict=False):
        body = text[m.end(): nxt.start() if nxt else len(text)].strip()
        lines = [ln for ln in body.splitlines() if not ln.lstrip().startswith("--")]
        query = "\n".join(lines).strip().rstrip(";").strip()
        if m.group(1) in queries:
            raise ValueError(f"skiplock: query {m.group(1)!r} is defined twice")
        queries[m.group(1)] = query
    return queries


@cache
def queries() -> dict[str, str]:
    """Every named query from every file, loaded once per process."""
    found: dict[str, str] = {}
    for path in sorted(sql_dir().glob("*.sql")):
        for name, query in parse(path.read_text()).items():
            if name in found:
                raise ValueError(f"skiplock: query {name!r} is defined twice ({path.name})")
            found[name] = query
    return found


def q(name: str) -> LiteralString:
    """The query called `name` (trusted text from our own files, hence LiteralString)."""
    try:
        return queries()[name]
    except KeyError:
        raise KeyError(f"skiplock: no query named {name!r} in {sql_dir()}") from None


def schema_sql() -> str:
    return (sql_dir() / "schema.sql").read_text()
