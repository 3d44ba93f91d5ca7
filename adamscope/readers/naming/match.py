"""Optimizer positions -> parameter names by shape, where the files allow it and marked where not.

Two situations, both allowing candidates that are no optimizer parameter (frozen parameters,
buffers; never an extra parameter):
- `place_in_order`: the candidates of each group are in the model's exact parameter order (a model
  built from its config): the optimizer's group is an order-preserving subsequence of them, and a
  position gets every name some placement that fits all shapes puts there.
- `place_by_tree`: the candidates are a set (model.safetensors lists keys alphabetically); within
  one shape they are ordered only as far as the module tree tells (`_position_candidates`), and
  when a shape has more candidates than positions the i-th position may hold any of the i-th to
  (i + extra)-th of them.
A position with one candidate is named; with several it gets the marker `prefix.{a|b}.suffix`
(`#k` added to keep names unique) and its candidate list.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from adamscope.errors import NamingError

Shape = tuple[int, ...]
# rank(parent module path, child name) -> declaration rank among its siblings, or None if unknown
Rank = Callable[[str, str], int | None]
_MAX_LISTED = 4  # ambiguity markers list at most this many candidates
_MAX_PERMUTED = 6  # unordered siblings beyond this are not enumerated: every position gets them all


@dataclass
class Match:
    """Names in optimizer position order; `ambiguous[i]`: the candidates of marked position i;
    `unused`: candidates that no placement gives to the optimizer (frozen parameters, buffers);
    `extra`: how many candidates have no optimizer entry (`unused` and those among ambiguous)."""

    names: list[str]
    ambiguous: dict[int, list[str]] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)
    extra: int = 0


def subsequence_candidates(
    pattern: Sequence[Shape | None], shapes: Sequence[Shape]
) -> list[list[int]] | None:
    """For each pattern position (None = any shape), the indices of `shapes` it takes in at least
    one order-preserving placement of the whole pattern; None when no placement exists."""
    import numpy as np

    k, n = len(pattern), len(shapes)
    if k > n:
        return None
    ids: dict[Shape, int] = {}
    have = np.array([ids.setdefault(tuple(s), len(ids)) for s in shapes], dtype=np.int64)
    match = np.ones((k, n), dtype=bool)
    for i, p in enumerate(pattern):
        if p is not None:
            match[i] = have == ids.get(tuple(p), -1)
    # fwd[i, j]: pattern[:i] fits into shapes[:j]; bwd[i, j]: pattern[i:] fits into shapes[j:]
    fwd = np.zeros((k + 1, n + 1), dtype=bool)
    fwd[0, :] = True
    for i in range(1, k + 1):
        fwd[i, 1:] = np.logical_or.accumulate(fwd[i - 1, :n] & match[i - 1])
    bwd = np.zeros((k + 1, n + 1), dtype=bool)
    bwd[k, :] = True
    for i in range(k - 1, -1, -1):
        bwd[i, :n] = np.logical_or.accumulate((match[i] & bwd[i + 1, 1:])[::-1])[::-1]
    if not fwd[k, n]:
        return None
    return [np.flatnonzero(match[i] & fwd[i, :n] & bwd[i + 1, 1:]).tolist() for i in range(k)]


def place_in_order(
    groups: Sequence[Sequence[Shape | None]],
    split: Sequence[Sequence[tuple[str, Shape]]],
    *,
    source: str,
    what: str,
) -> Match:
    """Names for each group's positions from that group's candidates in exact model order.

    Raises:
        NamingError: a group has more positions than candidates, or no placement fits the shapes.
    """
    chosen: list[set[str]] = []
    placed: set[str] = set()
    for g, (pattern, cands) in enumerate(zip(groups, split, strict=True)):
        where = subsequence_candidates(pattern, [s for _, s in cands])
        if where is None:
            raise NamingError(
                f"{source}: group {g} holds {len(pattern)} tensors that do not fit, in order and "
                f"shape, the {len(cands)} {what} parameters of that group; added or resized "
                "parameters (PEFT?) or another optimizer grouping cannot be named"
            )
        for idx in where:
            chosen.append({cands[j][0] for j in idx})
            placed.update(cands[j][0] for j in idx)
    unused = [n for cands in split for n, _ in cands if n not in placed]
    return _finish(chosen, unused, sum(len(c) for c in split) - len(chosen))


def place_by_tree(
    groups: Sequence[Sequence[Shape | None]],
    split: Sequence[Sequence[str]],
    shapes: dict[str, Shape],
    *,
    source: str,
    what: str,
    rank: Rank | None = None,
) -> Match:
    """Names for each group's positions from that group's unordered candidate names.

    Raises:
        NamingError: a position has no stored shape, or a shape has fewer candidates than positions.
    """
    chosen: list[set[str]] = [set() for _ in range(sum(len(p) for p in groups))]
    unused: list[str] = []
    offset = 0
    for g, (pattern, cands) in enumerate(zip(groups, split, strict=True)):
        if any(s is None for s in pattern):
            raise NamingError(
                f"{source}: group {g} has parameters without optimizer state, so their shapes "
                "are unknown; install transformers to name them"
            )
        wanted = Counter(tuple(s) for s in pattern if s is not None)
        for shape in sorted(set(wanted) | {shapes[n] for n in cands}):
            positions = [offset + i for i, s in enumerate(pattern) if s == shape]
            same = [n for n in cands if shapes[n] == shape]
            if len(positions) > len(same):
                raise NamingError(
                    f"{source}: group {g} holds {len(positions)} tensors of shape {list(shape)} "
                    f"but {what} has {len(same)} such candidates for that group; install "
                    "transformers or pass --model <model folder with config.json>"
                )
            if not positions:
                unused.extend(same)
                continue
            ordered = _position_candidates(same, rank)
            extra = len(same) - len(positions)
            for i, pos in enumerate(positions):
                chosen[pos] = set().union(*ordered[i : i + extra + 1])
        offset += len(pattern)
    return _finish(chosen, unused, sum(len(c) for c in split) - len(chosen))


def merge(matches: Sequence[Match]) -> Match:
    """One Match whose positions hold the candidates of all `matches` (same positions)."""
    if len(matches) == 1:
        return matches[0]
    chosen = [set() for _ in matches[0].names]
    for m in matches:
        for i, name in enumerate(m.names):
            chosen[i].update(m.ambiguous.get(i, [name]))
    unused = set.intersection(*(set(m.unused) for m in matches))
    return _finish(chosen, sorted(unused), min(m.extra for m in matches))


def _finish(chosen: list[set[str]], unused: list[str], extra: int) -> Match:
    ambiguous = {i: sorted(c) for i, c in enumerate(chosen) if len(c) > 1}
    names = [next(iter(c)) if len(c) == 1 else "" for c in chosen]
    markers = {i: ambiguity_marker(c) for i, c in ambiguous.items()}
    total, seen = Counter(markers.values()), Counter()
    for i, marker in markers.items():
        seen[marker] += 1
        names[i] = f"{marker}#{seen[marker]}" if total[marker] > 1 else marker
    return Match(names, ambiguous, sorted(unused), extra)


def ambiguity_marker(candidates: list[str]) -> str:
    """`a.b.{x|y}.c` for candidates sharing the dotted prefix `a.b` and suffix `c`."""
    parts = [c.split(".") for c in sorted(candidates)]
    pre = 0
    while all(len(p) > pre + 1 for p in parts) and len({p[pre] for p in parts}) == 1:
        pre += 1
    suf = 0
    while all(len(p) > pre + suf + 1 for p in parts) and len({p[-1 - suf] for p in parts}) == 1:
        suf += 1
    mids = sorted({".".join(p[pre : len(p) - suf]) for p in parts})
    mid = "|".join(mids) if len(mids) <= _MAX_LISTED else f"any of {len(mids)}"
    head = parts[0][:pre]
    tail = parts[0][len(parts[0]) - suf :] if suf else []
    return ".".join([*head, "{" + mid + "}", *tail])


@dataclass
class _Node:
    param: str | None = None  # the full name when this node is a parameter
    children: dict[str, _Node] = field(default_factory=dict)


def _position_candidates(names: list[str], rank: Rank | None = None) -> list[frozenset[str]]:
    """For same-shape names, the names each position (in model order) may hold.

    `named_parameters()` walks modules depth-first: a module's own parameters first, then its
    sub-modules, list children ("0", "1", ...) in index order; the order among named siblings is the
    declaration order, which the files do not record — `rank` supplies it where it is known.
    """
    root = _Node()
    for name in names:
        node = root
        for part in name.split("."):
            node = node.children.setdefault(part, _Node())
        node.param = name
    return _candidates(root, "", rank)


def _candidates(node: _Node, path: str, rank: Rank | None) -> list[frozenset[str]]:
    if node.param is not None:
        return [frozenset([node.param])]
    own = [(k, c) for k, c in node.children.items() if c.param is not None]
    subs = [(k, c) for k, c in node.children.items() if c.param is None]
    return _arrange(own, path, rank) + _arrange(subs, path, rank)


def _arrange(items: list[tuple[str, _Node]], path: str, rank: Rank | None) -> list[frozenset[str]]:
    def sub(k: str, c: _Node) -> list[frozenset[str]]:
        return _candidates(c, f"{path}.{k}" if path else k, rank)

    if items and all(k.isdigit() for k, _ in items):  # ModuleList / ParameterList: index order
        return [s for k, c in sorted(items, key=lambda kc: int(kc[0])) for s in sub(k, c)]
    ranks = [rank(path, k) if rank else None for k, _ in items]
    if items and all(r is not None for r in ranks):  # known declaration order, ties unordered
        by_rank: dict[int, list[tuple[str, _Node]]] = {}
        for r, item in sorted(zip(ranks, items, strict=True), key=lambda x: x[0]):
            by_rank.setdefault(r, []).append(item)
        return [s for same in by_rank.values() for s in _unordered(same, sub)]
    return _unordered(items, sub)


def _unordered(items: list[tuple[str, _Node]], sub: Callable) -> list[frozenset[str]]:
    blocks = [sub(k, c) for k, c in items]
    if len(blocks) <= 1:
        return blocks[0] if blocks else []
    size = sum(len(b) for b in blocks)
    if len(blocks) > _MAX_PERMUTED:
        everything = frozenset().union(*(s for b in blocks for s in b))
        return [everything] * size
    pos: list[set[str]] = [set() for _ in range(size)]
    for perm in itertools.permutations(blocks):
        for i, s in enumerate(s for b in perm for s in b):
            pos[i] |= s
    return [frozenset(p) for p in pos]
