"""The only chunk-aware loop: stream a TensorState once and fold every chunk into a TensorSketch.

Each chunk is moved to the device once, as float32; on CPU it is processed in cache-sized blocks.
Per block, everything (sums, u and r, moments, min/max, five histograms) is computed with torch on
that device; only a few scalars per block leave it. Memory is bounded by a chunk plus a few
block-sized temporaries; no float64 copy of anything larger than a block is made.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import queue
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from adamscope.config import StatsConfig
from adamscope.errors import AdamscopeError
from adamscope.readers.base import HyperParams, TensorState
from adamscope.stats.adam import (
    AdamCoefficients,
    coefficients,
    update_and_ratio,
    update_and_ratio_raw,
)
from adamscope.stats.prefetch import ChunkPrefetch, converted
from adamscope.stats.sketch import LOG_HI, LOG_LO, Moments, TensorSketch, combine_layer, name_key

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_CPU_BLOCK = 1 << 18  # 1 MiB of float32: a block and its temporaries stay in L2/L3
_SHIFT_POINTS = 4096  # points averaged for the shift of the moment sums


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


def resolve_device(spec: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else as torch spells it."""
    import torch

    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(spec)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise AdamscopeError(f"--device {spec}: CUDA is not available on this machine")
    return dev


def tensor_state_from_tensors(
    name: str,
    m: torch.Tensor,
    v: torch.Tensor,
    *,
    step: float,
    hp: HyperParams,
    vmax: torch.Tensor | None = None,
    piece: tuple[int, int] | None = None,
) -> TensorState:
    """Wrap in-memory exp_avg / exp_avg_sq (/ max_exp_avg_sq) tensors as a TensorState.

    For tests and for callers that already hold the state (e.g. a live optimizer).
    """
    if m.shape != v.shape or (vmax is not None and vmax.shape != m.shape):
        raise AdamscopeError(f"{name}: exp_avg {tuple(m.shape)} and exp_avg_sq shapes differ")
    fm, fv = m.detach().reshape(-1), v.detach().reshape(-1)
    fx = vmax.detach().reshape(-1) if vmax is not None else None

    def chunks(n: int) -> Iterator[tuple[int, Any, Any, Any]]:
        for s in range(0, fm.numel(), n):
            yield s, fm[s : s + n], fv[s : s + n], None if fx is None else fx[s : s + n]

    return TensorState(
        name=name,
        shape=tuple(m.shape),
        step=float(step),
        hp=hp,
        dtype=str(m.dtype).replace("torch.", ""),
        chunks=chunks,
        piece=piece,
    )


class _Sampler:
    """Which global flat indices of a tensor are in its uniform sample.

    Every coordinate is kept independently with probability p = dip_sample / total (all of them when
    total <= dip_sample): the index space is cut into fixed cells, each cell draws the gaps between
    its kept coordinates (geometric) from a generator seeded by (seed, name, cell).
    The sample is therefore the same whatever the chunk size or the split into pieces, and pieces'
    samples merge by concatenation. `TensorSketch.dip_sample` trims the rare excess over dip_sample.
    """

    def __init__(self, name: str, total: int, k: int, seed: int) -> None:
        self.total = total
        self.all = total <= k
        self.p = min(1.0, k / max(total, 1))
        # few, large cells: each costs one generator set-up (~0.1 ms), the dominant host cost
        self.cell = max(1 << 22, -(-total // 64))
        self.key = name_key(name)
        self.seed = seed
        self._cached: tuple[int, np.ndarray] | None = None

    def _positions(self, c: int) -> np.ndarray:
        """Sorted global indices of cell c in the sample: a Bernoulli(p) process drawn as
        geometric gaps between kept coordinates, so the cost is that of the sample, not the cell."""
        if self._cached is not None and self._cached[0] == c:
            return self._cached[1]
        lo = c * self.cell
        size = min(self.cell, self.total - lo)
        rng = np.random.default_rng([self.seed, self.key, c])
        parts = []
        end = -1
        while True:
            expect = size * self.p
            gaps = rng.geometric(self.p, size=int(expect + 6.0 * math.sqrt(expect) + 16))
            pos = end + np.cumsum(gaps)
            parts.append(pos)
            end = int(pos[-1])
            if end >= size:
                break
        pos = np.concatenate(parts)
        pos = pos[: np.searchsorted(pos, size)] + lo
        self._cached = (c, pos)
        return pos

    def indices(self, g0: int, g1: int) -> np.ndarray:
        """Sorted global indices in [g0, g1) that belong to the sample."""
        if self.all:
            return np.arange(g0, g1, dtype=np.int64)
        parts = []
        for c in range(g0 // self.cell, (g1 - 1) // self.cell + 1):
            pos = self._positions(c)
            parts.append(pos[np.searchsorted(pos, g0) : np.searchsorted(pos, g1)])
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)


class _Folder:
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

    def finish(self, sk: TensorSketch, others: list[_Folder] = ()) -> None:  # type: ignore[assignment]
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


def summarize(ts: TensorState, cfg: StatsConfig) -> TensorSketch:
    """One streaming pass over `ts.chunks(cfg.chunk_elems)` -> the tensor's (or piece's) sketch.

    A reader thread fetches (and, on a GPU, copies) the next chunk while the current one is reduced.
    On CPU the blocks of a chunk are shared out to `torch.get_num_threads()` worker threads, each
    running torch single-threaded on its own buffers: on a busy machine OpenMP's barriers between
    the threads of every small op cost more than the ops. The per-block scalars are merged in block
    order, so the result does not depend on the number of workers.

    Raises:
        AdamscopeError: invalid hyper-parameters/step, or a reader that yields a different number
            of elements than the tensor's shape says.
    """
    import torch

    device = resolve_device(cfg.device)
    k = coefficients(ts.hp, ts.step, convention=cfg.convention, name=ts.name)
    sk = TensorSketch(name=ts.name, step=ts.step, hp=ts.hp, cfg=cfg, half_width=k.hist_range)
    total = ts.piece[1] if ts.piece else ts.numel
    sampler = _Sampler(ts.name, total, cfg.dip_sample, cfg.seed)
    cpu = device.type == "cpu"
    block = _CPU_BLOCK if cpu else max(cfg.chunk_elems, 1)
    threads = torch.get_num_threads()
    # small tensors: one block, run inline
    big = cpu and min(total, cfg.chunk_elems) > block
    workers = max(1, _WORKERS or threads) if big else 1
    folders = [_Folder(k, cfg, device) for _ in range(workers)]
    free: queue.SimpleQueue[_Folder] = queue.SimpleQueue()
    for f in folders:
        free.put(f)
    inflight: deque[list[Future[None]]] = deque()
    fused_samples: list[tuple[np.ndarray, ...]] = []
    base: int | None = None
    seen = 0
    n_blocks = 0
    samples: list[tuple[np.ndarray, torch.Tensor, torch.Tensor]] = []
    warned = False
    pool = _pool(workers) if workers > 1 else None
    chunks = ChunkPrefetch(ts.chunks(cfg.chunk_elems), device) if total > cfg.chunk_elems else None
    toggle = threads > 1 and (pool is not None or cpu)
    if toggle:
        torch.set_num_threads(1)
    try:
        with torch.no_grad():
            for start, m, v, vmax in chunks or converted(ts.chunks(cfg.chunk_elems), device):
                if base is None:  # chunk starts may count from the piece or from the whole tensor
                    base = ts.piece[0] if ts.piece and start == 0 else 0
                if vmax is None and ts.hp.amsgrad and not warned:
                    log.warning(
                        "%s: amsgrad but no max_exp_avg_sq stored; using exp_avg_sq", ts.name
                    )
                    warned = True
                vd = v if vmax is None else vmax
                n = m.numel()
                if v.numel() != n or vd.numel() != n:
                    raise AdamscopeError(
                        f"{ts.name}: exp_avg and exp_avg_sq pieces differ in length at element "
                        f"{start} ({n} vs {v.numel()}): the state does not add up"
                    )
                seen += n
                bounds = [(n_blocks + j, s, s + block) for j, s in enumerate(range(0, n, block))]
                n_blocks += len(bounds)
                has_vmax = vmax is not None
                g0 = base + start
                idx = sampler.indices(g0, g0 + n)
                parts: list[Any] = [None] * len(bounds)
                if idx.size and folders[0].fused:  # the kernel picks the sample up as it goes
                    parts = _sample_parts(idx, g0, bounds, fused_samples)
                elif idx.size:
                    samples.append(_sample(m, vd, idx, g0, k))
                if pool is None:
                    for (i, s, e), part in zip(bounds, parts, strict=True):
                        folders[0].block(m[s:e], v[s:e], vd[s:e], has_vmax, i, part)
                else:  # one task per block, any free worker: no worker idles behind a slow one
                    inflight.append(
                        [
                            pool.submit(_fold_block, free, b, m, v, vd, has_vmax, part)
                            for b, part in zip(bounds, parts, strict=True)
                        ]
                    )
                while len(inflight) > 1:  # the next chunk's blocks queue behind this one's
                    for f in inflight.popleft():
                        f.result()
            while inflight:
                for f in inflight.popleft():
                    f.result()
    finally:
        for fs in inflight:  # an error: let the queued blocks go
            for f in fs:
                f.cancel()
        for fs in inflight:
            for f in fs:
                if not f.cancelled():
                    f.exception()
        if toggle:
            torch.set_num_threads(threads)
        if chunks is not None:
            chunks.close()
    if ts.piece is None and seen != ts.numel:
        raise AdamscopeError(
            f"{ts.name}: the reader yielded {seen} elements for a tensor of shape {list(ts.shape)}"
        )
    sk.numel = seen
    folders[0].finish(sk, folders[1:])
    for idx, su, sr, ok in fused_samples:  # filled by the kernel, now that every block is done
        samples.append((idx[ok], torch.from_numpy(su[ok]), torch.from_numpy(sr[ok])))
    if samples:
        sk.sample_idx = np.concatenate([s[0] for s in samples])
        sk.sample_u = torch.cat([s[1] for s in samples]).cpu().numpy()
        sk.sample_r = torch.cat([s[2] for s in samples]).cpu().numpy()
    return sk


def _sample_parts(
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


def _fold_block(
    free: queue.SimpleQueue[_Folder],
    bound: tuple[int, int, int],
    m: torch.Tensor,
    v: torch.Tensor,
    vd: torch.Tensor,
    has_vmax: bool,
    sample: tuple[np.ndarray, ...] | None = None,
) -> None:
    """Fold one block with whichever folder is free (a folder is used by one thread at a time)."""
    i, s, e = bound
    folder = free.get()
    try:
        with folder.torch.no_grad():
            folder.block(m[s:e], v[s:e], vd[s:e], has_vmax, i, sample)
    finally:
        free.put(folder)


_POOL: tuple[int, ThreadPoolExecutor] | None = None
_WORKERS: int | None = None  # set by `cpu_workers`


@contextlib.contextmanager
def cpu_workers() -> Iterator[None]:
    """Within: torch runs single-threaded and `summarize` shares blocks out to as many worker
    threads as torch had. Wrap a loop over many tensors in it: toggling torch's thread count per
    tensor costs ~1 ms, and on a shared machine OpenMP's barriers make every small multi-threaded
    op (a sample's u and r, a small tensor's block) cost milliseconds.
    """
    import torch

    global _WORKERS
    before, threads = _WORKERS, torch.get_num_threads()
    _WORKERS = max(_WORKERS or 1, threads)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        _WORKERS = before


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of worker threads (torch ops release the GIL)."""
    global _POOL
    if _POOL is None or _POOL[0] < workers:
        _POOL = (workers, ThreadPoolExecutor(workers, thread_name_prefix="adamscope-engine"))
    return _POOL[1]


def _sample(
    m: torch.Tensor, vd: torch.Tensor, idx: np.ndarray, g0: int, k: AdamCoefficients
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """u and r at the sampled coordinates of a chunk (non-finite ones dropped)."""
    import torch

    if m.device.type == "cpu" and use_fused():
        from adamscope.stats import fused

        keep, u, r = fused.sample_ur(m.numpy(), vd.numpy(), idx - g0, k)
        return (idx if keep.all() else idx[keep]), torch.from_numpy(u), torch.from_numpy(r)
    pos = torch.from_numpy(idx - g0).to(m.device)
    sm, sd = m[pos], vd[pos]
    ok = torch.isfinite(sm) & torch.isfinite(sd)
    if not bool(ok.all()):
        sm, sd = sm[ok], sd[ok]
        idx = idx[ok.cpu().numpy()]
    u, r = update_and_ratio(sm, sd, k)
    return idx, u, r


def merge_layer(sketches: list[TensorSketch], *, name: str | None = None) -> TensorSketch:
    """A layer's sketch from its tensors': merged moments; dip on a numel-weighted sample."""
    return combine_layer(sketches, name=name)
