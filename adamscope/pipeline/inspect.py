"""`adamscope inspect`: what a path holds, without reading any tensor data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from adamscope.config import ReaderOptions
from adamscope.pipeline.discovery import discover


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} TB"


def inspect_path(path: Path, *, options: ReaderOptions) -> Iterator[str]:
    """Yield the lines `adamscope inspect` prints."""
    found = discover(Path(path))
    if len(found) > 1:
        yield f"{path}: run folder with {len(found)} checkpoints"
        for f in found:
            yield f"  {f.path.name:40s} {getattr(f.reader, 'name', '?')}"
        yield "details of the last one:"
    f = found[-1]
    reader = f.reader(f.path, options=options)
    info = reader.describe()
    yield f"{info.path}: format {info.format}, {_size(info.bytes_on_disk)} on disk"
    for note in info.notes:
        yield f"  note: {note}"
    groups: dict[tuple, int] = {}
    rows = []
    n_params = 0
    step = info.step
    for ts in reader.iter_tensors():
        hp = ts.hp
        key = (hp.beta1, hp.beta2, hp.eps, hp.lr, hp.weight_decay, hp.amsgrad, hp.bias_correction)
        groups[key] = groups.get(key, 0) + 1
        numel = ts.piece[1] if ts.piece else ts.numel
        if ts.piece is None or ts.piece[0] == 0:
            rows.append((ts.name, ts.shape, ts.dtype, ts.step))
            n_params += numel
        step = ts.step if step is None else step
    yield f"  step {step}, {len(rows)} tensors, {n_params:,} parameters"
    for (b1, b2, eps, lr, wd, ams, bc), n in groups.items():
        yield (
            f"  group: betas=({b1}, {b2}) eps={eps} lr={lr} weight_decay={wd}"
            + (" amsgrad" if ams else "")
            + ("" if bc else " no-bias-correction")
            + f"  [{n} tensors]"
        )
    width = min(max((len(r[0]) for r in rows), default=10), 70)
    for name, shape, dtype, _ in rows:
        yield f"  {name:{width}s} {str(list(shape)):>18s} {dtype}"
