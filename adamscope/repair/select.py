"""Which tensors a repair resets: `--reset-layers` items are verdicts (every layer whose `stage`
is that one in analyze's tables of this checkpoint), layer names or parameter names."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from adamscope.errors import AdamscopeError
from adamscope.repair.plan import Layout, RepairOptions

log = logging.getLogger(__name__)


def verdict_names() -> tuple[str, ...]:
    from adamscope.stats.stages import VERDICTS

    return VERDICTS


def choose(
    layout: Layout, path: Path, options: RepairOptions
) -> tuple[dict[str, tuple[str, str]], str, list[str]]:
    """The tensors to reset: {name: (layer, why)}, where the verdicts came from, and notes.

    Raises:
        AdamscopeError: an item that is no verdict, layer or parameter of the checkpoint; tables
            that hold no rows of this checkpoint or name tensors it does not hold.
    """
    stages = [s for s in options.reset_layers if s in verdict_names()]
    named = [s for s in options.reset_layers if s not in verdict_names()]
    names = list(layout.tensors)
    notes: list[str] = []
    chosen: dict[str, tuple[str, str]] = {}
    if stages:
        tensors, layers, source = _tables(path, options)
        unknown = sorted(set(tensors["tensor"].to_list()) - set(names))
        if unknown:
            raise AdamscopeError(
                f"{source}: names tensors {', '.join(unknown[:3])} that {path} does not hold "
                "(tables of another checkpoint, or analysed with another --model?)"
            )
        layer_of = dict(zip(tensors["tensor"].to_list(), tensors["layer"].to_list(), strict=True))
        stage_of = dict(zip(layers["layer"].to_list(), layers["stage"].to_list(), strict=True))
        for stage in stages:
            hit = [lay for lay, s in stage_of.items() if s == stage]
            if not hit:
                notes.append(f"no layer has verdict {stage}{_why_none(stage, source)}")
            for name, lay in layer_of.items():
                if lay in hit:
                    chosen.setdefault(name, (lay, f"stage {stage}"))
    else:
        from adamscope.tables.layers import assign_layers

        layer_of = {n: lo.layer for n, lo in assign_layers(names).items()}
        source = "names given"
    for item in named:
        in_layer = [n for n, lay in layer_of.items() if lay == item]
        if item in layout.tensors:
            chosen.setdefault(item, (layer_of.get(item, "?"), "named"))
        elif in_layer:
            for n in in_layer:
                chosen.setdefault(n, (item, "named layer"))
        else:
            layers_seen = ", ".join(dict.fromkeys(layer_of.values()))
            raise AdamscopeError(
                f"{path}: --reset-layers {item!r} is no verdict ({', '.join(verdict_names())}), "
                f"layer ({layers_seen}) or parameter name of this checkpoint"
            )
    return chosen, source, notes


def _why_none(stage: str, source: str) -> str:
    if stage == "unstable" and source.startswith("analyze"):
        return (
            " (one checkpoint alone is never judged unstable, that needs the run's history: "
            "analyze the run folder and pass --from-tables OUT)"
        )
    return ""


def _tables(path: Path, options: RepairOptions) -> tuple[Any, Any, str]:
    """(tensor rows, layer rows) of this checkpoint and where they came from."""
    import polars as pl

    from adamscope.api import analyze, load

    if options.from_tables is not None:
        tables = load(options.from_tables)
        root = Path(tables.manifest.get("inputs", {}).get("path", "."))
        rels = tables.layers["checkpoint"].unique().to_list()
        match = [c for c in rels if _same(root / c if c != "." else root, path)]
        if not match:
            shown = ", ".join(sorted(rels)[:5])
            raise AdamscopeError(
                f"{options.from_tables}: its tables hold no rows of {path} (they cover {root}: "
                f"{shown})"
            )
        source = f"tables in {options.from_tables}"
        pick = pl.col("checkpoint") == match[0]
        return tables.tensors.filter(pick), tables.layers.filter(pick), source
    opts = replace(
        options.analysis, out=None, resume=False, gradients=False, tensor_histograms=False
    )
    log.info("%s: analysing for verdicts (in memory)", path)
    tables = analyze(path, options=opts)
    return tables.tensors, tables.layers, "analyze of the checkpoint (in memory)"


def _same(a: Path, b: Path) -> bool:
    """A table's checkpoint and the one given are the same (a file or the folder holding it)."""
    a, b = a.resolve(), b.resolve()
    return a == b or a.parent == b or b.parent == a
