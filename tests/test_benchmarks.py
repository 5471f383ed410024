"""The benchmark command's bookkeeping (the benchmarks themselves run by hand)."""

from __future__ import annotations

from typing import Any

from benchmarks.__main__ import merge_rerun


def _row(benchmark: str, figure: str, value: float) -> dict[str, Any]:
    return {"benchmark": benchmark, "figure": figure, "value": value}


def test_a_rerun_replaces_its_rows_in_place_and_keeps_the_others() -> None:
    previous = {
        "machine": {"date": "full", "cpu": "x"},
        "benchmarks": {"a": {"seconds": 1}, "b": {"seconds": 2}, "c": {"seconds": 3}},
        "rows": [_row("a", "a1", 1), _row("b", "b1", 2), _row("b", "b2", 3),
                 _row("c", "c1", 4)],
    }  # fmt: skip
    info = {"date": "rerun", "load_at_start": [1], "load_at_end": [2], "seconds": 5}
    rows, timings, machine = merge_rerun(
        previous, [_row("b", "b1", 20), _row("d", "d1", 7)], {"b": {"seconds": 9},
        "d": {"seconds": 1}}, info,
    )  # fmt: skip
    assert [(r["figure"], r["value"]) for r in rows] == [
        ("a1", 1), ("b1", 20), ("c1", 4), ("d1", 7)
    ]  # fmt: skip
    assert timings["b"] == {"seconds": 9}
    assert timings["a"] == {"seconds": 1}
    assert machine["date"] == "full"
    assert machine["reruns"] == [{"benchmarks": ["b", "d"], **info}]
