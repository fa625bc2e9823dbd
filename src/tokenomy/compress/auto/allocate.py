"""Per-tensor types for the fewest bytes under an estimated mean-KLD budget (or the least
estimated KLD under a size): a greedy Lagrangian sweep over the table.

Each tensor's options are reduced to their lower convex hull in (bytes, KLD); starting
from every tensor at its cheapest type, the sweep repeatedly takes the upgrade that
removes the most estimated KLD per added byte. Every step is a point of the frontier
(bytes vs estimated KLD); a budget picks the first point under it, a size the last point
that fits. Bytes are what the file and memory-bound decode cost: on CPU the planner's
decode speed is bytes-bound, so fewer bytes is fewer $ per token at equal quality.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

from tokenomy.compress.auto.table import Table
from tokenomy.errors import InvalidInputError


@dataclass(frozen=True)
class Point:
    step: int  # number of upgrades from the cheapest allocation
    bytes: int  # whole file, estimated: quantized tensors + everything else
    kld: float  # estimated mean KLD per token


@dataclass
class Frontier:
    start: dict[str, str]  # tensor -> cheapest type on its hull
    moves: list[tuple[str, str]]  # (tensor, new type), in sweep order
    points: list[Point]  # points[i]: after i moves

    def types_at(self, step: int) -> dict[str, str]:
        types = dict(self.start)
        for name, qtype in self.moves[:step]:
            types[name] = qtype
        return types


def _hull(kld: dict[str, float], size: dict[str, int]) -> list[str]:
    """Types on the lower convex hull of (bytes, KLD), cheapest first."""
    opts = sorted(kld, key=lambda t: (size[t], kld[t]))
    kept: list[str] = []
    for t in opts:
        if kept and kld[t] >= kld[kept[-1]]:
            continue  # more bytes, no less KLD: dominated
        while len(kept) >= 2:
            a, b = kept[-2], kept[-1]
            slope_ab = (kld[a] - kld[b]) / (size[b] - size[a])
            slope_bt = (kld[b] - kld[t]) / (size[t] - size[b])
            if slope_bt >= slope_ab:
                kept.pop()  # b is not on the hull
            else:
                break
        kept.append(t)
    return kept


def frontier(table: Table, other_bytes: int, types: list[str] | None = None) -> Frontier:
    """The sweep; `other_bytes`: what the file holds besides the tensors of the table."""
    allowed = set(types or table.config.types)
    hulls, start, heap = {}, {}, []
    for row in table.rows:
        kld = {t: v for t, v in row.kld.items() if t in allowed}
        if not kld:
            raise InvalidInputError(f"no allowed type fits {row.name} {row.shape}.")
        hull = _hull(kld, {t: row.bytes[t] for t in kld})
        hulls[row.name] = (hull, kld, row.bytes)
        start[row.name] = hull[0]
        _push(heap, row.name, 0, hulls[row.name])
    total = other_bytes + sum(row.bytes[start[row.name]] for row in table.rows)
    current = {row.name: row.kld[start[row.name]] for row in table.rows}
    points, moves = [Point(0, total, math.fsum(current.values()))], []
    while heap:
        _, name, i = heapq.heappop(heap)
        hull, kld, size = hulls[name]
        total += size[hull[i + 1]] - size[hull[i]]
        current[name] = kld[hull[i + 1]]
        moves.append((name, hull[i + 1]))
        points.append(Point(len(moves), total, math.fsum(current.values())))
        _push(heap, name, i + 1, hulls[name])
    return Frontier(start, moves, points)


def _push(heap, name, i, hull_entry) -> None:
    hull, kld, size = hull_entry
    if i + 1 < len(hull):
        gain = (kld[hull[i]] - kld[hull[i + 1]]) / (size[hull[i + 1]] - size[hull[i]])
        heapq.heappush(heap, (-gain, name, i))


def choose(front: Frontier, max_kld: float | None = None,
           size_bytes: int | None = None) -> Point:
    """The cheapest point under `max_kld`, or the most accurate one within `size_bytes`
    (both: the cheapest under the budget, if it fits the size)."""
    if max_kld is None and size_bytes is None:
        raise InvalidInputError("give a quality budget (--max-kld) or a size (--size-mb).")
    pts = front.points
    if size_bytes is not None and pts[0].bytes > size_bytes:
        raise InvalidInputError(
            f"no allocation fits {size_bytes / 1e6:.2f} MB: the smallest reachable is "
            f"{pts[0].bytes / 1e6:.2f} MB (estimated KLD {pts[0].kld:.4f}).")
    if max_kld is not None:
        under = [p for p in pts if p.kld <= max_kld]
        best = min(pts, key=lambda p: p.kld)
        if not under:
            raise InvalidInputError(
                f"no allocation meets --max-kld {max_kld:g}: the best reachable is an "
                f"estimated mean KLD of {best.kld:.4g} at {best.bytes / 1e6:.2f} MB.")
        pick = under[0]
        if size_bytes is not None and pick.bytes > size_bytes:
            fit = [p for p in pts if p.bytes <= size_bytes]
            raise InvalidInputError(
                f"no allocation meets --max-kld {max_kld:g} within {size_bytes / 1e6:.2f} MB:"
                f" the best reachable at that size is an estimated mean KLD of "
                f"{fit[-1].kld:.4g}; the budget needs {pick.bytes / 1e6:.2f} MB.")
        return pick
    return [p for p in pts if p.bytes <= size_bytes][-1]


@dataclass(frozen=True)
class Allocation:
    types: dict[str, str]
    bytes: int
    kld: float  # estimated


def fill(front: Frontier, point: Point, size_bytes: int) -> Allocation:
    """`point` topped up to `size_bytes`: the later upgrades that still fit, in sweep order
    (a tensor whose next upgrade does not fit takes none of its later ones). The frontier
    moves in steps as large as one tensor's upgrade (the embedding's are megabytes); this
    spends what is left of the size on the smaller ones."""
    types, total, kld = front.types_at(point.step), point.bytes, point.kld
    blocked: set[str] = set()
    for i in range(point.step, len(front.moves)):
        name, qtype = front.moves[i]
        grow = front.points[i + 1].bytes - front.points[i].bytes
        if name in blocked or total + grow > size_bytes:
            blocked.add(name)
            continue
        types[name] = qtype
        total += grow
        kld += front.points[i + 1].kld - front.points[i].kld
    return Allocation(types, total, max(kld, 0.0))


def next_under(front: Frontier, current: Point, target_kld: float) -> Point:
    """The first point after `current` whose estimate is under `target_kld` (or the last
    point there is)."""
    for p in front.points[current.step + 1:]:
        if p.kld <= target_kld:
            return p
    return front.points[-1]


def uniform_within(table: Table, other_bytes: int, size_bytes: int,
                   types: list[str]) -> Allocation | None:
    """The largest single type (of `types`, fitting every tensor) whose whole file is
    within `size_bytes`: the uniform allocation an allocation of that size must beat."""
    best = None
    for t in types:
        if not all(t in row.kld for row in table.rows):
            continue
        total = other_bytes + sum(row.bytes[t] for row in table.rows)
        if total <= size_bytes and (best is None or total > best.bytes):
            best = Allocation({row.name: t for row in table.rows}, total,
                              math.fsum(row.kld[t] for row in table.rows))
    return best
