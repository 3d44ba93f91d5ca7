"""Hartigan's dip of a sorted sample, compiled by numba without the GIL (see `bimodality.dip`).

Hartigan & Hartigan (1985) find the dip of the empirical distribution F of n sorted points by
narrowing a candidate modal interval [x_lo, x_hi]. Each round takes the greatest convex minorant G
and the least concave majorant L of F on the interval, and the largest vertical gap d between them
at their vertices. If d does not exceed the deviation D found so far, D / 2 is the dip. Otherwise
the interval shrinks to the vertices that bracket that gap, and D grows to the largest deviation of
F from G on the part cut off on the left and from L on the part cut off on the right.

Everything is counted in points: F jumps by one at each x_i, so with hulls built on (x_i, i) the
step function's lower corner is (x_i, i) and its upper corner (x_i, i + 1). The GCM lies under the
lower corners and the LCM over the upper ones, whence the `+ 1` below; the dip is D / (2n).

The hulls are built once, as linked lists: `below[i]` is the vertex before i on the GCM of points
0..i (left to right), `above[i]` the vertex after i on the LCM of i..n-1 (right to left). lo stays
a vertex of the GCM of 0..hi and hi one of the LCM of lo..n-1 as the interval narrows (a vertex of
a hull is a vertex of the hull of any subset holding it), so each round's hulls are read off these
lists from hi down and from lo up: a round costs its vertices plus the points it cuts off, O(n) in
all after the two O(n) passes.
"""

# ruff: noqa: ANN001, ANN202, PLR0913

from __future__ import annotations

import numba as nb
import numpy as np

jit = nb.njit(cache=True, nogil=True)


@jit
def _gcm_links(x, below):
    # b stays on the hull of 0..i when it lies strictly below the chord a -> i
    below[0] = -1
    for i in range(1, x.size):
        b = i - 1
        a = below[b]
        while a >= 0 and (b - a) * (x[i] - x[a]) >= (i - a) * (x[b] - x[a]):
            b = a
            a = below[a]
        below[i] = b


@jit
def _lcm_links(x, above):
    # b stays on the hull of i..n-1 when it lies strictly above the chord i -> a
    n = x.size
    above[n - 1] = n
    for i in range(n - 2, -1, -1):
        b = i + 1
        a = above[b]
        while a < n and (b - i) * (x[a] - x[i]) <= (a - i) * (x[b] - x[i]):
            b = a
            a = above[a]
        above[i] = b


@jit
def _at(x, h, s, j):
    """The hull through vertices h at x_j, on its segment h[s] <= j <= h[s + 1] (in points)."""
    a = h[s]
    b = h[s + 1]
    dx = x[b] - x[a]
    if dx == 0.0:  # a vertical run of ties: the hull passes through each of its points
        return np.float64(j)
    return a + (b - a) * ((x[j] - x[a]) / dx)


@jit
def _segment(h, k, s, j):
    """Advance s until h[s] <= j <= h[s + 1] (h ascending, h[0] <= j <= h[k - 1])."""
    while s + 2 < k and h[s + 1] < j:
        s += 1
    return s


@jit
def _largest_gap(x, gv, kg, lv, kl):
    """(d, new_lo, new_hi): the largest L - G at the hulls' vertices (L's win a tie, as in the
    paper) and the vertices of the other hull that bracket it."""
    dg = -1.0
    at_g = 0
    s = 0
    for a in range(kg):
        s = _segment(lv, kl, s, gv[a])
        val = _at(x, lv, s, gv[a]) + 1.0 - gv[a]
        if val > dg:
            dg = val
            at_g = a
    dl = -1.0
    at_l = 0
    s = 0
    for b in range(kl):
        s = _segment(gv, kg, s, lv[b])
        val = lv[b] + 1.0 - _at(x, gv, s, lv[b])
        if val > dl:
            dl = val
            at_l = b
    if dg > dl:
        t = 0  # the first L vertex at or right of G's
        while lv[t] < gv[at_g]:
            t += 1
        return dg, gv[at_g], lv[t]
    t = kg - 1  # the last G vertex at or left of L's
    while gv[t] > lv[at_l]:
        t -= 1
    return dl, gv[t], lv[at_l]


@jit
def dip_sorted(x):
    """Hartigan's dip of sorted float64 x; 0 when all points are equal or evenly spaced (diptest's
    `allow_zero`; the dip of the empirical distribution itself is at least 1 / 2n)."""
    n = x.size
    if n < 2 or x[0] == x[n - 1]:
        return 0.0
    below = np.empty(n, np.int64)
    above = np.empty(n, np.int64)
    _gcm_links(x, below)
    _lcm_links(x, above)
    gv = np.empty(n, np.int64)
    lv = np.empty(n, np.int64)
    lo = 0
    hi = n - 1
    big = 0.0  # D
    while hi > lo:
        kg = 0
        j = hi
        while j > lo:
            gv[kg] = j
            kg += 1
            j = below[j]
        gv[kg] = lo
        kg += 1
        gv[:kg] = gv[:kg][::-1].copy()
        kl = 0
        j = lo
        while j < hi:
            lv[kl] = j
            kl += 1
            j = above[j]
        lv[kl] = hi
        kl += 1
        if kg == 2 and kl == 2:  # the points are collinear: no gap (diptest's convention, which
            break  # makes the dip of n evenly spaced points 0, not 1 / 2n; later rounds stop too)
        d, new_lo, new_hi = _largest_gap(x, gv, kg, lv, kl)
        if d <= big:
            break
        # F's deviation from G on [lo, new_lo] (upper corners) and from L on [new_hi, hi]
        s = 0
        for j in range(lo, new_lo + 1):
            s = _segment(gv, kg, s, j)
            big = max(big, j + 1.0 - _at(x, gv, s, j))
        s = 0
        for j in range(new_hi, hi + 1):
            s = _segment(lv, kl, s, j)
            big = max(big, _at(x, lv, s, j) + 1.0 - j)
        if new_lo == lo and new_hi == hi:  # no narrower interval: the gap itself is the dip
            big = max(big, d)
            break
        lo = new_lo
        hi = new_hi
    return big / (2.0 * n)
