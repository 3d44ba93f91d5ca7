"""`Tables`: what `analyze` produces, in memory (polars DataFrames + the manifest), and the small
queries that figures and the report share. `load(OUT)` reads one from disk (the one loader),
`Tables.write(OUT)` writes one."""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

log = logging.getLogger(__name__)


# table name -> file in OUT; the order is the order of `Tables.frames()`
FILES = {
    "tensors": "tensors.parquet",
    "layers": "layers.parquet",
    "histograms": "histograms.parquet",
    "losses": "losses.parquet",
    "grad_norms": "grad_norms.parquet",
    "gradients": "gradients.parquet",
}
MANIFEST = "manifest.json"


@dataclass(frozen=True, kw_only=True)
class Tables:
    """The output of `adamscope analyze`: one polars DataFrame per table (docs/tables.md), None
    where a table is absent (no training log, no consecutive checkpoints), and the manifest.

    `path` is the folder the tables were read from or written to (None: only in memory);
    `checkpoints` the checkpoints analysed; `failures` lists (checkpoint, error) for checkpoints
    skipped with keep_going (as the manifest does).
    """

    tensors: pl.DataFrame
    layers: pl.DataFrame
    histograms: pl.DataFrame | None = None
    losses: pl.DataFrame | None = None
    grad_norms: pl.DataFrame | None = None  # long form: step, name, grad_norm (logged, exact)
    gradients: pl.DataFrame | None = None  # exact, from consecutive checkpoints
    manifest: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    checkpoints: list[Path] = field(default_factory=list)  # the checkpoints analysed, step order
    failures: tuple[tuple[Path, str], ...] = ()
    skipped: list[Path] = field(default_factory=list)  # taken from OUT with resume, not re-read

    def frames(self) -> dict[str, pl.DataFrame]:
        """{table name: DataFrame} of the tables present."""
        return {k: getattr(self, k) for k in FILES if getattr(self, k) is not None}

    def write(self, out: Path) -> dict[str, Path]:
        """Write every table present and the manifest into `out` (each file atomically).

        Returns {table name: path}."""
        from adamscope.tables import io

        out = Path(out)
        written = {}
        for name, df in self.frames().items():
            io.write_parquet(df, out / FILES[name])
            written[name] = out / FILES[name]
        if self.manifest:
            io.write_json(self.manifest, out / MANIFEST)
        return written

    def __repr__(self) -> str:
        parts = [f"{k}: {df.height} rows" for k, df in self.frames().items()]
        where = f" from {self.path}" if self.path else ""
        return f"Tables({', '.join(parts)}{where})"

    @property
    def convention(self) -> str:
        return str(self.manifest.get("options", {}).get("convention", "torch"))

    @property
    def thresholds(self) -> dict[str, float]:
        opts = self.manifest.get("options", {})
        thr = opts.get("thresholds") or self.manifest.get("thresholds") or {}
        from dataclasses import asdict

        from adamscope.config import StageThresholds

        return {**asdict(StageThresholds()), **thr}

    def steps(self) -> list[int]:
        """Checkpoint steps present in the layers table, ascending."""
        return sorted(set(self.layers["step"].to_list()))

    def layer_order(self) -> list[str]:
        """Layer names in depth order."""
        df = self.layers.group_by("layer").agg(pl.col("depth").min()).sort("depth", "layer")
        return df["layer"].to_list()

    def hyper(self, layer: str, step: int) -> dict[str, float]:
        """beta1, beta2, eps of a layer at a step (its first tensor's group; else defaults)."""
        rows = self.tensors.filter((pl.col("layer") == layer) & (pl.col("step") == step))
        if len(rows) == 0:
            rows = self.tensors.filter(pl.col("layer") == layer)
        out = {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
        if len(rows):
            for k in out:
                v = rows[k][0] if k in rows.columns else None
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    out[k] = float(v)
        return out

    def layer_row(self, layer: str, step: int) -> dict[str, Any] | None:
        rows = self.layers.filter((pl.col("layer") == layer) & (pl.col("step") == step))
        return rows.row(0, named=True) if len(rows) else None

    def density(self, layer: str, step: int, quantity: str) -> pl.DataFrame:
        """Histogram of `quantity` for a layer at a step as (lo, hi, count, density), sorted by lo.

        density = count / (total * width): a probability density in the quantity's unit. Uses the
        layer-level rows; falls back to summing the layer's tensor-level rows bin by bin.
        """
        if self.histograms is None:
            from adamscope.errors import AdamscopeError

            raise AdamscopeError(
                f"{self.path or 'these tables'}: no histograms table; run `adamscope analyze` "
                "(it writes histograms.parquet)"
            )
        h = self.histograms.filter(
            (pl.col("layer") == layer) & (pl.col("step") == step) & (pl.col("quantity") == quantity)
        )
        rows = h.filter(pl.col("level") == "layer")
        if len(rows):
            first = rows["checkpoint"][0]  # one checkpoint, should two share a step
            rows = rows.filter(pl.col("checkpoint") == first)
        else:
            rows = h.filter(pl.col("level") == "tensor")
        rows = rows.group_by("lo", "hi").agg(pl.col("count").sum()).sort("lo")
        total = rows["count"].sum() if len(rows) else 0
        if total == 0:
            return pl.DataFrame(
                schema={
                    "lo": pl.Float64,
                    "hi": pl.Float64,
                    "count": pl.Int64,
                    "density": pl.Float64,
                }
            )
        return rows.with_columns(
            density=pl.col("count") / (total * (pl.col("hi") - pl.col("lo")))
        ).select("lo", "hi", "count", "density")


def load(out: Path) -> Tables:
    """The tables `adamscope analyze` wrote into `out` (or `Tables.write`), as a `Tables`.

    tensors.parquet and layers.parquet are required; the other tables are None when absent.

    Raises:
        AdamscopeError: a required table is missing or has no rows, or manifest.json is not JSON.
    """
    from adamscope.errors import AdamscopeError

    out = Path(out)
    if not out.is_dir():
        raise AdamscopeError(
            f"{out}: not a folder of tables; run `adamscope analyze PATH -o {out}`"
        )
    manifest: dict[str, Any] = {}
    mpath = out / MANIFEST
    if mpath.is_file():
        try:
            manifest = json.loads(mpath.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise AdamscopeError(f"{mpath}: not valid JSON ({e})") from e
        if not isinstance(manifest, dict):
            raise AdamscopeError(f"{mpath}: not a JSON object")
    frames: dict[str, pl.DataFrame | None] = {}
    live = _live_parts(out, live_steps(manifest))
    for name, file in FILES.items():
        path = out / file
        if not path.is_file() and live.get(name):
            frames[name] = _stack(name, live[name])
            continue
        if not path.is_file():
            if name in ("tensors", "layers"):
                raise AdamscopeError(
                    f"{path}: missing; run `adamscope analyze PATH -o {out}` first (it writes {file})"
                )
            frames[name] = None
            continue
        try:
            frames[name] = pl.read_parquet(path)
        except Exception as e:  # noqa: BLE001 - polars/arrow raise many kinds; one line names the file
            raise AdamscopeError(
                f"{path}: not a readable Parquet table ({type(e).__name__})"
            ) from e
    if live.get("tensors") and not (out / FILES["tensors"]).is_file():
        from adamscope.config import StageThresholds
        from adamscope.tables.rows import run_verdicts

        known = asdict(StageThresholds())
        given = manifest.get("thresholds")
        given = {k: v for k, v in given.items() if k in known} if isinstance(given, dict) else {}
        thr = StageThresholds(**{**known, **given})
        frames["tensors"] = run_verdicts(frames["tensors"], key="tensor", thresholds=thr)  # type: ignore[arg-type]
        frames["layers"] = run_verdicts(frames["layers"], key="layer", thresholds=thr)  # type: ignore[arg-type]
    inputs = manifest.get("inputs", {}) if isinstance(manifest.get("inputs"), dict) else {}
    root = Path(str(inputs.get("path", out)))
    ckpts = [
        root / str(c.get("path")) for c in inputs.get("checkpoints", []) if isinstance(c, dict)
    ]
    failures = tuple(
        (Path(str(f.get("path"))), str(f.get("error")))
        for f in manifest.get("failures", [])
        if isinstance(f, dict)
    )
    return Tables(
        **frames,  # type: ignore[arg-type]
        manifest=manifest,
        path=out,
        checkpoints=ckpts,
        failures=failures,
    )


LIVE = "live"  # adamscope.monitor's parts: OUT/live/<table>/*.parquet, one per flush


def _live_parts(out: Path, done: set[int] | None) -> dict[str, list[Path]]:
    """{table: its part files in name (= step) order} of a monitored run; {} otherwise. Temporary
    files of a flush in progress (dot-names) are not parts, nor (when `done` is given: the steps
    the manifest lists, written after all of a flush's parts) parts of an unfinished flush."""
    root = out / LIVE
    if not root.is_dir() or root.is_symlink():
        return {}
    parts = {}
    for name in FILES:
        if not (root / name).is_dir():
            continue
        files = sorted(p for p in (root / name).glob("*.parquet") if not p.name.startswith("."))
        if done is not None and name != "losses":
            files = [p for p in files if _part_step(p) in done]
        parts[name] = files
    return parts


def _part_step(p: Path) -> int | None:
    stem = p.stem
    return int(stem[5:]) if stem.startswith("step-") and stem[5:].isdigit() else None


def live_steps(manifest: Any) -> set[int] | None:
    """The steps a monitor's manifest lists as written (None: not a monitor's manifest)."""
    try:
        return {int(x) for x in manifest["live"]["steps"]}
    except (KeyError, TypeError, ValueError):
        return None


def _stack(name: str, parts: list[Path]) -> pl.DataFrame:
    """The parts of one table stacked (a column a part lacks is null there)."""
    from adamscope.errors import AdamscopeError

    frames = []
    for p in parts:
        try:
            frames.append(pl.read_parquet(p))
        except Exception as e:  # noqa: BLE001 - one line naming the file
            raise AdamscopeError(f"{p}: not a readable Parquet part ({type(e).__name__})") from e
    return pl.concat(frames, how="diagonal_relaxed")


def as_tables(tables: Tables | str | os.PathLike[str]) -> Tables:
    """`tables` itself, or the tables loaded from that folder (what the figures and the report take)."""
    return tables if isinstance(tables, Tables) else load(Path(tables))
