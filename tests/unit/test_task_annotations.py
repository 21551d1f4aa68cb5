"""Constraints written in a handler's type hints (`Annotated[int, Field(...)]`) are part of
its argument check, so a bounded argument is refused before the job is stored."""

from __future__ import annotations

from typing import Annotated

import pytest
from pydantic import Field

from skiplock import InvalidArguments, TaskRegistry, task


def test_annotated_field_constraints_are_enforced_and_in_the_schema():
    reg = TaskRegistry()

    @task(name="bounded", registry=reg)
    async def bounded(n: Annotated[int, Field(ge=1, le=10)] = 1) -> None:
        return None

    t = reg.get("bounded")
    assert t.validate({"n": 10}) == {"n": 10}
    with pytest.raises(InvalidArguments) as exc:
        t.validate({"n": 11})
    assert exc.value.details["field"] == "args.n"
    assert t.json_schema()["properties"]["n"]["maximum"] == 10
