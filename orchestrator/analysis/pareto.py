"""Pareto frontiers: the configurations no other configuration beats on both axes."""

from __future__ import annotations

import math
from collections.abc import Sequence


def pareto_front(xs: Sequence[float | None], ys: Sequence[float | None], *, maximise_x: bool,
                 maximise_y: bool) -> list[bool | None]:
    """For each point, whether it is on the frontier; None where a coordinate is missing.

    A point is dominated when another is at least as good on both axes and strictly
    better on one. Ties (identical points) are all on the frontier.
    """
    def usable(v: float | None) -> bool:
        return v is not None and not (isinstance(v, float) and math.isnan(v))

    sx = 1.0 if maximise_x else -1.0
    sy = 1.0 if maximise_y else -1.0
    pts = [(sx * float(x), sy * float(y)) if usable(x) and usable(y) else None for x, y in zip(xs, ys)]
    out: list[bool | None] = []
    for i, p in enumerate(pts):
        if p is None:
            out.append(None)
            continue
        dominated = any(
            q is not None and j != i and q[0] >= p[0] and q[1] >= p[1] and (q[0] > p[0] or q[1] > p[1])
            for j, q in enumerate(pts)
        )
        out.append(not dominated)
    return out
