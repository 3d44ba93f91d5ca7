"""The only chunk-aware loop: stream a TensorState once and fold every chunk into a TensorSketch.

Each chunk is moved to the device once, as float32; on CPU it is processed in cache-sized blocks,
one task per block on worker threads. Per block, everything (sums, u and r, moments, min/max, five
histograms, the dip sample's points) is computed in one place (`folder.Folder`: the fused numba
kernel on CPU, torch ops on CUDA); only a few scalars per block leave it. Memory is bounded by the
chunks in flight plus a few block-sized temporaries; no float64 copy of anything larger than a
block is made.
"""

from __future__ import annotations

import contextlib
import logging
import queue
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from adamscope.config import StatsConfig
from adamscope.errors import AdamscopeError, CorruptCheckpointError
from adamscope.stats.adam import coefficients, has_negative
from adamscope.stats.folder import Folder, sample_chunk, sample_parts
from adamscope.stats.prefetch import ChunkPrefetch, converted
from adamscope.stats.sampler import Sampler
from adamscope.stats.sketch import TensorSketch, combine_layer
from adamscope.vocab import HyperParams, TensorState

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_CPU_BLOCK = 1 << 18  # 1 MiB of float32: a block and its temporaries stay in L2/L3


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


def summarize(ts: TensorState, cfg: StatsConfig, *, workers: int | None = None) -> TensorSketch:
    """One streaming pass over `ts.chunks(cfg.chunk_elems)` -> the tensor's (or piece's) sketch.

    A reader thread fetches (and, on a GPU, copies) the next chunk while the current one is reduced.
    On CPU the blocks of a chunk go, one task each, to as many worker threads as torch had (torch
    itself single-threaded: on a busy machine OpenMP's barriers between the threads of every small
    op cost more than the ops); each worker folds with its own `Folder`. The per-block scalars are
    merged in block order, so the result does not depend on the number of workers.
    `workers` fixes their number and leaves torch's (process-wide) thread count alone: for callers
    on a side thread of a training process, which owns that setting.

    Raises:
        AdamscopeError: invalid hyper-parameters/step, or a reader that yields a different number
            of elements than the tensor's shape says.
        CorruptCheckpointError: exp_avg_sq (or max_exp_avg_sq) with negative entries.
    """
    import torch

    device = resolve_device(cfg.device)
    k = coefficients(ts.hp, ts.step, convention=cfg.convention, name=ts.name)
    sk = TensorSketch(name=ts.name, step=ts.step, hp=ts.hp, cfg=cfg, half_width=k.hist_range)
    total = ts.piece[1] if ts.piece else ts.numel
    sampler = Sampler(ts.name, total, cfg.dip_sample, cfg.seed)
    cpu = device.type == "cpu"
    block = _CPU_BLOCK if cpu else max(cfg.chunk_elems, 1)
    threads = torch.get_num_threads()
    # small tensors: one block, run inline
    big = cpu and min(total, cfg.chunk_elems) > block
    fixed = workers is not None
    workers = (workers if fixed else max(1, _WORKERS or threads)) if big else 1
    folders = [Folder(k, cfg, device) for _ in range(workers)]
    blocks = _Blocks(folders, _pool(workers) if workers > 1 else None)
    fused_samples: list[tuple[np.ndarray, ...]] = []  # (idx, u, r, ok) the kernel fills in
    samples: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (idx, u, r)
    base: int | None = None
    seen = 0
    n_blocks = 0
    warned = False
    chunks = ChunkPrefetch(ts.chunks(cfg.chunk_elems), device) if total > cfg.chunk_elems else None
    toggle = threads > 1 and cpu and not fixed
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
                # a moving average of squares: negative entries are corrupt bytes, and every
                # reader's chunks pass here (NaN/Inf are counted as `nonfinite` instead)
                for key, x in (("exp_avg_sq", v), ("max_exp_avg_sq", vmax)):
                    if x is not None and has_negative(x):
                        raise CorruptCheckpointError(
                            f"'{ts.name}' {key} has negative entries (at or after element "
                            f"{(base or 0) + start}): not an Adam second moment, the state is "
                            "corrupt"
                        )
                seen += n
                bounds = [(n_blocks + j, s, s + block) for j, s in enumerate(range(0, n, block))]
                n_blocks += len(bounds)
                g0 = base + start
                idx = sampler.indices(g0, g0 + n)
                parts: list[Any] = [None] * len(bounds)
                if idx.size and folders[0].fused:  # the kernel picks the sample up as it goes
                    parts = sample_parts(idx, g0, bounds, fused_samples)
                elif idx.size:
                    samples.append(sample_chunk(m, vd, idx, g0, k))
                blocks.submit(m, v, vd, vmax is not None, bounds, parts)
            blocks.wait()
    finally:
        blocks.cancel()
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
    samples += [(idx[ok], su[ok], sr[ok]) for idx, su, sr, ok in fused_samples]
    if samples:
        sk.sample_idx, sk.sample_u, sk.sample_r = (
            np.concatenate(x) for x in zip(*samples, strict=True)
        )
    return sk


class _Blocks:
    """Hands a tensor's blocks to its folders: inline with one folder, else one pool task per block
    folded by whichever folder is free (no worker idles behind a slow one), with at most two chunks'
    blocks in flight (the next chunk's queue behind this one's)."""

    def __init__(self, folders: list[Folder], pool: ThreadPoolExecutor | None) -> None:
        self.folders = folders
        self.pool = pool
        self.free: queue.SimpleQueue[Folder] = queue.SimpleQueue()
        for f in folders:
            self.free.put(f)
        self.inflight: deque[list[Future[None]]] = deque()

    def submit(
        self,
        m: torch.Tensor,
        v: torch.Tensor,
        vd: torch.Tensor,
        has_vmax: bool,
        bounds: list[tuple[int, int, int]],
        parts: list[Any],
    ) -> None:
        if self.pool is None:
            for (i, s, e), part in zip(bounds, parts, strict=True):
                self.folders[0].block(m[s:e], v[s:e], vd[s:e], has_vmax, i, part)
            return
        self.inflight.append(
            [
                self.pool.submit(_fold_block, self.free, b, m, v, vd, has_vmax, part)
                for b, part in zip(bounds, parts, strict=True)
            ]
        )
        self.wait(keep=1)

    def wait(self, keep: int = 0) -> None:
        """Until at most `keep` chunks' blocks are in flight; re-raises a block's error."""
        while len(self.inflight) > keep:
            for f in self.inflight.popleft():
                f.result()

    def cancel(self) -> None:
        """After an error: drop the queued blocks and wait for the running ones."""
        for fs in self.inflight:
            for f in fs:
                f.cancel()
        for fs in self.inflight:
            for f in fs:
                if not f.cancelled():
                    f.exception()
        self.inflight.clear()


def _fold_block(
    free: queue.SimpleQueue[Folder],
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


def merge_layer(sketches: list[TensorSketch], *, name: str | None = None) -> TensorSketch:
    """A layer's sketch from its tensors': merged moments; dip on a numel-weighted sample."""
    return combine_layer(sketches, name=name)
