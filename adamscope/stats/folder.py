"""Folding blocks of (m, v, vd) into histograms and per-block scalars: the fused numba kernel on CPU
when it is there, torch ops otherwise (and on CUDA). `engine.summarize` drives it; the dip sample's
u and r come from here too, computed the way the fold computes them.
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from adamscope.config import StatsConfig
from adamscope.errors import AdamscopeError
from adamscope.stats.adam import AdamCoefficients, update_and_ratio, update_and_ratio_raw
from adamscope.stats.sketch import LOG_HI, LOG_LO, Moments, TensorSketch

if TYPE_CHECKING:
    import torch

_SHIFT_POINTS = 4096  # points averaged for the shift of the moment sums (torch path)


def use_fused() -> bool:
    """Whether the CPU path runs the fused numba kernel: ADAMSCOPE_KERNEL=torch forces the torch
    ops (the reference path), =numba requires the kernel; unset/auto uses it when numba works."""
    choice = os.environ.get("ADAMSCOPE_KERNEL", "auto").lower()
    if choice == "torch":
        return False
    from adamscope.stats import fused

    if choice == "numba" and not fused.available():
        raise AdamscopeError("ADAMSCOPE_KERNEL=numba but numba is not importable or failed")
    if choice not in ("auto", "numba"):
        raise AdamscopeError(f"ADAMSCOPE_KERNEL={choice!r}: use auto, numba or torch")
    return fused.available()


class Folder:
    """Folds blocks of float32 (m, v, vd) into histograms (on the device) and float64 scalars."""

    def __init__(self, k: AdamCoefficients, cfg: StatsConfig, device: torch.device) -> None:
        import torch

        self.torch = torch
        self.k = k
        self.cpu = device.type == "cpu"
        nb, bpd = cfg.hist_bins, cfg.log_bins_per_decade
        self.nb, self.n_log = nb, (LOG_HI - LOG_LO) * bpd
        half = k.hist_range
        # bin index + 1 (bin 0 = underflow, last = overflow) = x * scale + offset, truncated
        self.lin = (nb / (2.0 * half), nb / 2.0 + 1.0)
        self.logq = (float(bpd), -LOG_LO * bpd + 1.0)
        # log10 sqrt(v_hat) = 0.5 log10(v) - 0.5 log10(bc2): binned straight from log10(v)
        self.logv = (0.5 * bpd, (-0.5 * math.log10(k.bc2) - LOG_LO) * bpd + 1.0)
        thr = np.float32(k.eps * k.eps * k.bc2)  # sqrt(v_hat) < eps  <=>  vd < eps**2 (1 - b2**t)
        self.below_thr = float(thr) if thr > 0 else None
        zeros = (  # numpy's zeros are ~20x cheaper than torch's for these small arrays
            (lambda n: torch.from_numpy(np.zeros(n, np.int64)))
            if self.cpu
            else (lambda n: torch.zeros(n, dtype=torch.int64, device=device))
        )
        self.hists = {
            q: zeros(size + 2)
            for q, size in (
                ("u", nb),
                ("r", nb),
                ("log10_abs_u", self.n_log),
                ("log10_abs_r", self.n_log),
                ("log10_sqrt_vhat", self.n_log),
            )
        }
        self.blocks: list[Any] = []  # per block: float64 tensor of scalars (see `block`)
        self.ns: list[int] = []
        self.order: list[int] = []  # global block index of each entry, for a deterministic merge
        self.nonfinite = 0
        self._no_zeros = torch.zeros((), dtype=torch.int64, device=device)
        self._bufs: tuple[torch.Tensor, ...] | None = None
        self.bpd = bpd
        # the fused compiled kernel on CPU (numba) when it is there, else torch ops per statistic
        self.fused = self.cpu and use_fused()
        self._np_hists = tuple(h.numpy() for h in self.hists.values()) if self.fused else ()

    def _buffers(self, n: int) -> tuple[torch.Tensor, ...]:
        """Five float32 block buffers and an int32 one, allocated once and reused."""
        t = self.torch
        if self._bufs is None or self._bufs[0].numel() < n:
            dev = self._no_zeros.device
            f = [t.empty(n, dtype=t.float32, device=dev) for _ in range(5)]
            self._bufs = (*f, t.empty(n, dtype=t.int32, device=dev))
        return tuple(b[:n] for b in self._bufs)

    def _log10(self, x: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        # numpy's SIMD log10 is ~4x faster than torch's on CPU; -inf for zeros is what we want
        if self.cpu:
            with np.errstate(divide="ignore"):
                np.log10(x.numpy(), out=out.numpy())
            return out
        return self.torch.log10(x, out=out)

    def _count(
        self, q: str, x: torch.Tensor, scale: float, offset: float, top: int, out: torch.Tensor
    ) -> None:
        """Add x to histogram q via scratch `out` (may be x): bin = trunc(x * scale + offset)."""
        t = self.torch
        t.mul(x, scale, out=out).add_(offset).clamp_(0.0, top + 1.0)
        x = out
        idx = self._bufs[5][: x.numel()] if self.cpu else x.to(t.int32)
        if self.cpu:
            idx.copy_(x)
        self.hists[q] += t.bincount(idx, minlength=top + 2)

    def _dot(self, a: torch.Tensor, b: torch.Tensor, tmp: torch.Tensor) -> torch.Tensor:
        # Not BLAS sdot: its float32 running sums lose ~1e-4 on 1e5 same-sign terms; torch.sum
        # sums pairwise.
        return self.torch.mul(a, b, out=tmp).sum()

    def _moment_sums(
        self, x: torch.Tensor, d: torch.Tensor, d2: torch.Tensor, tmp: torch.Tensor
    ) -> list[torch.Tensor]:
        """[shift, S1..S4], S_k = sum (x - shift)**k; the shift (a strided mean) keeps S1 small."""
        t = self.torch
        stride = max(1, x.numel() // _SHIFT_POINTS)
        c = x[::stride].mean()
        t.sub(x, c, out=d)
        t.mul(d, d, out=d2)
        return [c, d.sum(), d2.sum(), self._dot(d2, d, tmp), self._dot(d2, d2, tmp)]

    def _sums(
        self, m: torch.Tensor, v: torch.Tensor, vd: torch.Tensor | None, tmp: torch.Tensor
    ) -> tuple[list[torch.Tensor], bool]:
        """[sum v, sum m**2] and whether every term was finite (an inf/nan term poisons a sum)."""
        t = self.torch
        sums = [v.sum(), self._dot(m, m, tmp)]
        extra = [vd.sum()] if vd is not None else []
        check = t.stack(sums + extra).tolist()
        if check[1] < 1e-30 * m.numel():  # squares of |m| < 1e-19 underflow in float32
            sums[1] = t.dot(m.double(), m.double())
        return sums, all(math.isfinite(x) for x in check)

    def block(
        self,
        m: torch.Tensor,
        v: torch.Tensor,
        vd: torch.Tensor,
        has_vmax: bool,
        index: int = 0,
        sample: tuple[np.ndarray, ...] | None = None,
    ) -> None:
        """Fold block number `index`; m, v, vd are float32 1-D on the device, may hold NaN/Inf.

        `sample` (fused path only): see `fused.fold`.
        """
        if self.fused:
            self._block_fused(m, v, vd, index, sample)
            return
        t = self.torch
        sums, finite = self._sums(m, v, vd if has_vmax else None, self._buffers(m.numel())[2])
        if not finite:
            ok = t.isfinite(m) & t.isfinite(v)
            if has_vmax:
                ok &= t.isfinite(vd)
            bad = m.numel() - int(ok.sum())
            if bad:
                self.nonfinite += bad
                m, v = m[ok], v[ok]
                vd = vd[ok] if has_vmax else v
                if not m.numel():
                    return
            sums, finite = self._sums(m, v, vd if has_vmax else None, self._buffers(m.numel())[2])
            if not finite:  # finite terms, overflowing float32 sum
                sums = [v.double().sum(), t.dot(m.double(), m.double())]
        n = m.numel()
        u, r, a, b, flag_buf, _ = self._buffers(n)
        self._count("log10_sqrt_vhat", self._log10(v, a), *self.logv, self.n_log, a)
        flags = flag_buf.view(t.bool)[:n] if self.cpu else None
        cmp = t.lt(vd, self.below_thr, out=flags) if self.below_thr else t.le(vd, 0.0, out=flags)
        below = t.count_nonzero(cmp)
        update_and_ratio_raw(m, vd, self.k, out=(u, r, a))
        rlo, rhi = t.aminmax(r)
        zeros = self._no_zeros
        # On CPU look first (cheap); on a GPU always fix, a sync would cost more than the work.
        if not self.cpu or not (math.isfinite(rlo) and math.isfinite(rhi)):
            zero = t.eq(vd, 0.0, out=flags)
            zeros = t.count_nonzero(zero)
            r.masked_fill_(zero, 0.0)
            r.nan_to_num_(nan=0.0)  # |m| huge over a denormal v (edited state) may overflow
            rlo, rhi = t.aminmax(r)
        ulo, uhi = t.aminmax(u)
        parts = [*sums, below, zeros, ulo, uhi, rlo, rhi]
        parts += self._moment_sums(u, a, b, flag_buf) + self._moment_sums(r, a, b, flag_buf)
        self._count("u", u, *self.lin, self.nb, a)
        self._count("r", r, *self.lin, self.nb, a)
        self._count("log10_abs_u", self._log10(u.abs_(), u), *self.logq, self.n_log, u)
        self._count("log10_abs_r", self._log10(r.abs_(), r), *self.logq, self.n_log, r)
        self.blocks.append(t.stack([p.to(t.float64) for p in parts]))
        self.ns.append(n)
        self.order.append(index)

    def _block_fused(
        self,
        m: torch.Tensor,
        v: torch.Tensor,
        vd: torch.Tensor,
        index: int,
        sample: tuple[np.ndarray, ...] | None,
    ) -> None:
        from adamscope.stats import fused

        arrays = [np.ascontiguousarray(x.numpy()) for x in (m, v, vd)]
        row, n, bad = fused.fold(
            *arrays, self.k, self._np_hists, self.nb, self.bpd, self.below_thr, sample
        )
        self.nonfinite += bad
        if n:
            self.blocks.append(self.torch.from_numpy(row))
            self.ns.append(n)
            self.order.append(index)

    def finish(self, sk: TensorSketch, others: list[Folder] = ()) -> None:  # type: ignore[assignment]
        """Combine the per-block scalars of this and `others` (float64, Pebay, in block order)."""
        folders = [self, *others]
        for f in folders:
            sk.nonfinite += f.nonfinite
            for q, h in f.hists.items():
                sk.hists[q] = sk.hists[q] + h.cpu().numpy()
        entries = sorted(
            (e for f in folders for e in zip(f.order, f.ns, f.blocks, strict=True)),
            key=lambda e: e[0],
        )
        if not entries:
            return
        rows = self.torch.stack([b for _, _, b in entries]).cpu().numpy()
        for (_, n, _), row in zip(entries, rows, strict=True):
            vs, ms, below, zeros, ulo, uhi, rlo, rhi = row[:8]
            sk.v_sum += float(vs)
            sk.m_sq += float(ms)
            sk.below_eps += int(below)
            sk.zero_v += int(zeros)
            sk.u_min, sk.u_max = min(sk.u_min, float(ulo)), max(sk.u_max, float(uhi))
            sk.r_min, sk.r_max = min(sk.r_min, float(rlo)), max(sk.r_max, float(rhi))
            sk.mu = sk.mu.merge(Moments.from_shifted_sums(n, *map(float, row[8:13])))
            sk.mr = sk.mr.merge(Moments.from_shifted_sums(n, *map(float, row[13:18])))
        sk.vhat_sum = sk.v_sum / self.k.bc2


def sample_chunk(
    m: torch.Tensor, vd: torch.Tensor, idx: np.ndarray, g0: int, k: AdamCoefficients
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """u and r at the sampled coordinates of a chunk (non-finite ones dropped), with torch ops (the
    fused CPU path picks the sample up inside its kernel instead: `sample_parts`)."""
    import torch

    pos = torch.from_numpy(idx - g0).to(m.device)
    sm, sd = m[pos], vd[pos]
    ok = torch.isfinite(sm) & torch.isfinite(sd)
    if not bool(ok.all()):
        sm, sd = sm[ok], sd[ok]
        idx = idx[ok.cpu().numpy()]
    u, r = update_and_ratio(sm, sd, k)
    return idx, u.cpu().numpy(), r.cpu().numpy()


def sample_parts(
    idx: np.ndarray, g0: int, bounds: list[tuple[int, int, int]], out: list[tuple[np.ndarray, ...]]
) -> list[tuple[np.ndarray, ...]]:
    """Output arrays for a chunk's sample (appended to `out`) and each block's share of them."""
    rel = idx - g0
    su = np.empty(idx.size, np.float32)
    sr = np.empty(idx.size, np.float32)
    ok = np.zeros(idx.size, np.bool_)
    out.append((idx, su, sr, ok))
    cuts = np.searchsorted(rel, [s for _, s, _ in bounds] + [bounds[-1][2]])
    return [
        (rel[a:b] - s, su[a:b], sr[a:b], ok[a:b])
        for (_, s, _), a, b in zip(bounds, cuts[:-1], cuts[1:], strict=True)
    ]
