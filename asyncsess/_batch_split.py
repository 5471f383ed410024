"""How a batch's fetched values are split between its callers and joined again.

Fetch structures are `tf.compat.v1.Session.run`'s: a fetch, or lists, tuples,
namedtuples and dicts of them; the values mirror them.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np


def structure_key(fetches: Any) -> Hashable:
    """A hashable key equal for fetch structures that batch together."""
    if isinstance(fetches, Mapping):
        return (type(fetches), tuple((k, structure_key(v)) for k, v in fetches.items()))
    if isinstance(fetches, (list, tuple)):
        return (type(fetches), tuple(structure_key(v) for v in fetches))
    if isinstance(fetches, Hashable):
        return fetches
    return ("id", id(fetches))


def split_outputs(
    fetches: Any, outputs: Any, row_counts: list[int], total_rows: int
) -> list[Any]:
    """*outputs* of a batch cut into one value per caller of *row_counts* rows.

    Raises:
      ValueError: a fetched tensor whose first dimension is not *total_rows*.
    """
    bounds = []
    start = 0
    for rows in row_counts:
        bounds.append((start, start + rows))
        start += rows
    return _split(fetches, outputs, bounds, total_rows)


def _split(
    fetch: Any, value: Any, bounds: list[tuple[int, int]], total: int
) -> list[Any]:
    if isinstance(fetch, Mapping):
        per_key = {k: _split(f, value[k], bounds, total) for k, f in fetch.items()}
        return [
            _like(value, {k: parts[i] for k, parts in per_key.items()})
            for i in range(len(bounds))
        ]
    if isinstance(fetch, (list, tuple)):
        columns = [
            _split(f, v, bounds, total) for f, v in zip(fetch, value, strict=True)
        ]
        return [_like(value, [col[i] for col in columns]) for i in range(len(bounds))]
    if value is None:  # an op: nothing to split
        return [None] * len(bounds)
    shape = np.shape(value)
    if not shape or shape[0] != total:
        raise ValueError(
            f"Batcher cannot split fetched tensor {_name(fetch)} between its callers: "
            f"its shape is {tuple(shape)}, and its first dimension must be the "
            f"batch's row count ({total}). Fetch it with session.run_without_hooks "
            "instead, or return one row per input row."
        )
    return [value[lo:hi] for lo, hi in bounds]


def join_parts(fetches: Any, parts: list[Any]) -> Any:
    """The values of a call split over several batches, joined along rows."""
    if isinstance(fetches, Mapping):
        return _like(
            parts[0],
            {k: join_parts(f, [p[k] for p in parts]) for k, f in fetches.items()},
        )
    if isinstance(fetches, (list, tuple)):
        return _like(
            parts[0],
            [join_parts(f, [p[i] for p in parts]) for i, f in enumerate(fetches)],
        )
    if parts[0] is None:
        return None
    return np.concatenate(parts)


def _like(value: Any, items: Any) -> Any:
    """A container of *value*'s type holding *items* (a dict or a list)."""
    kind = type(value)
    if isinstance(items, dict):
        if kind is dict:
            return items
        try:
            return kind(items)
        except TypeError:  # a Mapping whose constructor wants more
            return items
    if kind is list:
        return items
    if kind is tuple:
        return tuple(items)
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a namedtuple
        return kind(*items)
    return kind(items)


def _name(fetch: Any) -> str:
    name = getattr(fetch, "name", None)
    return repr(name if isinstance(name, str) else fetch)
