"""TensorBoard event files -> wide frame (step + a column per scalar tag), by tensorboard's reader.

The optional extra: `pip install tensorboard` (or `pip install adamscope[tensorboard]`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl

from adamscope.errors import AdamscopeError

log = logging.getLogger(__name__)

INSTALL = "pip install tensorboard  (or: pip install 'adamscope[tensorboard]')"


def read_tensorboard(path: Path) -> pl.DataFrame:
    """Every scalar of an event file (or of the event files directly in a folder), keyed by step.

    When a tag has several values at one step (a resumed run), the last written wins.

    Raises:
        AdamscopeError: tensorboard is not installed, or the file holds no scalars.
    """
    try:
        from tensorboard.backend.event_processing import event_accumulator as ea
    except ImportError as e:
        raise AdamscopeError(f"{path}: TensorBoard logs need tensorboard: {INSTALL}") from e

    # size_guidance 0 = keep every event (the default keeps a reservoir sample of 10k scalars).
    acc = ea.EventAccumulator(str(path), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    try:
        acc.Reload()
    except Exception as e:  # the reader raises its own DataLossError, OSError, ...
        why = f"{type(e).__name__}: {e}"
        raise AdamscopeError(f"{path}: cannot read TensorBoard events ({why})") from e
    tags = acc.Tags()
    frames: list[pl.DataFrame] = []
    for tag in tags.get(ea.SCALARS, []):
        events = acc.Scalars(tag)
        frames.append(_frame(tag, [e.step for e in events], [e.value for e in events]))
    for tag in tags.get(ea.TENSORS, []):  # summary-v2 scalars are stored as 0-d tensors
        steps, values = [], []
        for e in acc.Tensors(tag):
            value = _scalar(e.tensor_proto)
            if value is not None:
                steps.append(e.step)
                values.append(value)
        if steps:
            frames.append(_frame(tag, steps, values))
    if not frames:
        raise AdamscopeError(f"{path}: no scalar values in the TensorBoard events")
    out = frames[0]
    for f in frames[1:]:
        out = out.join(f, on="step", how="full", coalesce=True)
    return out.sort("step")


def _frame(tag: str, steps: list[int], values: list[float]) -> pl.DataFrame:
    df = pl.DataFrame({"step": steps, tag: values}, schema={"step": pl.Int64, tag: pl.Float64})
    return df.unique("step", keep="last", maintain_order=True)


def _scalar(proto: object) -> float | None:
    from tensorboard.util import tensor_util

    try:
        arr = tensor_util.make_ndarray(proto)
    except Exception:  # strings, images, ...: not a scalar we can plot
        return None
    if arr.size != 1 or arr.dtype.kind not in "fiu":
        return None
    return float(arr.reshape(()))
