"""Fixtures and reporting for the chaos scenarios.

Each scenario that has a long form is parametrized by `form` ("short" / "long"). The short
form runs in `make test`; the long form (marked slow) runs with `SKIPLOCK_CHAOS=long`, which
`make chaos` sets, and then replaces the short one. Every scenario reports one line
(submitted, executed, reruns, duplicated, lost, recover seconds), printed at once and again
in a "chaos scenarios" section at the end of the pytest run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.embedded_pg import Cluster, scratch_database
from tests.acceptance.chaos.dbq import create_ledger
from tests.acceptance.chaos.fleet import Fleet
from tests.acceptance.chaos.ledger import Audit

HERE = Path(__file__).resolve().parent
LONG = os.environ.get("SKIPLOCK_CHAOS") == "long"
FORMS = [pytest.param("short", id="short"), pytest.param("long", id="long", marks=pytest.mark.slow)]
_REPORTS: list[str] = []


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    dropped = []
    for item in items:
        if HERE not in Path(str(item.fspath)).parents:
            continue
        form = getattr(item, "callspec", None) and item.callspec.params.get("form")  # type: ignore[attr-defined]
        if form == "short" and LONG:
            dropped.append(item)
        elif form == "long" and not LONG:
            item.add_marker(pytest.mark.skip(reason="long form: run `make chaos` (SKIPLOCK_CHAOS=long)"))
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [i for i in items if i not in dropped]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _REPORTS:
        terminalreporter.section("chaos scenarios")
        for line in _REPORTS:
            terminalreporter.write_line(line)


Report = Callable[..., None]


@pytest.fixture
def chaos_report(request: pytest.FixtureRequest) -> Report:
    """report(audit, recover_s, **extra): one line for this scenario."""
    def report(audit: Audit, recover_s: float | None, **extra: Any) -> None:
        name = request.node.name.removeprefix("test_")
        recover = "-" if recover_s is None else f"{recover_s:.1f}"
        more = " ".join(f"{k}={v}" for k, v in extra.items())
        line = (f"{name:<48} submitted={audit.submitted:<5} executed={audit.executed:<5} reruns={audit.reruns:<4} "
                f"duplicated={audit.duplicated:<3} lost={len(audit.lost)} recover_s={recover:<5} {more}").rstrip()
        if audit.lost_claims:
            line += f" lost_claims={audit.lost_claims}"
        _REPORTS.append(line)
        print(f"\nchaos: {line}")
    return report


@pytest.fixture
def chaos_url(db_url: str) -> str:
    """This test's own database (on the session cluster) with the ledger table."""
    create_ledger(db_url)
    return db_url


@pytest.fixture
def private_cluster() -> Iterator[tuple[Cluster, str]]:
    """A PostgreSQL cluster of this test's own, migrated, with the ledger: one a scenario
    may restart or crash without touching the server other tests use."""
    with scratch_database("skiplock-chaos-") as (cluster, url):
        create_ledger(url)
        yield cluster, url


@pytest.fixture
def make_fleet(tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """make_fleet(url, **settings): a Fleet whose processes are all ended after the test."""
    fleets: list[Fleet] = []

    def make(url: str, **settings: Any) -> Fleet:
        f = Fleet(url, tmp_path, **settings)
        fleets.append(f)
        return f

    yield make
    for f in fleets:
        f.stop_all()
