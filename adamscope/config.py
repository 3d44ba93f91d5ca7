"""Options shared by the CLI and the library, as frozen dataclasses that check themselves."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from adamscope.errors import AdamscopeError

Convention = Literal["torch", "paper"]
_DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


class OptionError(AdamscopeError, ValueError):
    """An option has a value it cannot take (the message names the option and what it accepts)."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise OptionError(message)


@dataclass(frozen=True, kw_only=True)
class StageThresholds:
    """Thresholds of the theory's stages (THEORY.md; docs/stages.md says how they were chosen)."""

    suppression: float = 0.5  # u is "suppressed" when rms(u)/rms(r) < this
    dip: float = 0.01  # r is "bimodal" when dip(r) >= this ...
    dip_p: float = 0.01  # ... and the dip test's p-value on its sample < this
    min_numel: int = 1000  # tensors/layers smaller than this get no stage
    u_equals_r: float = 0.9  # the verdict "unstable" needs u ~ r: suppression >= this

    def __post_init__(self) -> None:
        _check(
            0 < self.suppression <= 1, f"suppression threshold {self.suppression}: needs 0 < x <= 1"
        )
        _check(0 <= self.dip <= 1, f"dip threshold {self.dip}: needs 0 <= x <= 1")
        _check(0 < self.dip_p < 1, f"dip_p threshold {self.dip_p}: needs 0 < x < 1")
        _check(self.min_numel >= 4, f"min_numel {self.min_numel}: needs >= 4")
        _check(
            self.suppression <= self.u_equals_r <= 1,
            f"u_equals_r {self.u_equals_r}: needs suppression <= x <= 1",
        )


@dataclass(frozen=True, kw_only=True)
class StatsConfig:
    """How the statistics engine computes per-tensor summaries."""

    convention: Convention = "torch"
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    chunk_elems: int = 1 << 22  # elements of m (and of v) per chunk: bounds memory
    hist_bins: int = 512  # bins of the linear u and r histograms (range from the Adam bound)
    log_bins_per_decade: int = 20  # bins of the log10-magnitude histograms
    dip_sample: int = 65536  # uniform sample size per tensor for Hartigan's dip
    seed: int = 0
    thresholds: StageThresholds = field(default_factory=StageThresholds)

    def __post_init__(self) -> None:
        _check(
            self.convention in ("torch", "paper"),
            f"convention {self.convention!r}: choose 'torch' or 'paper'",
        )
        _check(
            isinstance(self.device, str) and bool(_DEVICE.match(self.device)),
            f"device {self.device!r}: choose auto, cpu, cuda or cuda:N",
        )
        _check(self.chunk_elems >= 1, f"chunk_elems {self.chunk_elems}: needs >= 1")
        _check(self.hist_bins >= 2, f"hist_bins {self.hist_bins}: needs >= 2")
        _check(
            1 <= self.log_bins_per_decade <= 200,
            f"log_bins_per_decade {self.log_bins_per_decade}: needs 1..200",
        )
        _check(self.dip_sample >= 4, f"dip_sample {self.dip_sample}: needs >= 4")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, kw_only=True)
class ReaderOptions:
    """Options that affect how a checkpoint is read (not how it is analysed)."""

    model: Path | None = None  # a model state_dict / folder to recover parameter names from
    trust_pickle: bool = False  # DANGEROUS: allow arbitrary pickle globals
    beta1: float | None = None  # for formats that do not store betas/eps (MLX)
    beta2: float | None = None
    eps: float | None = None
    bias_correction: bool | None = None

    def __post_init__(self) -> None:
        for name in ("beta1", "beta2"):
            b = getattr(self, name)
            _check(b is None or 0 <= b < 1, f"{name} {b}: needs 0 <= x < 1")
        _check(self.eps is None or self.eps >= 0, f"eps {self.eps}: needs >= 0")


@dataclass(frozen=True, kw_only=True)
class AnalyzeOptions:
    """Options of `analyze` beyond the statistics themselves."""

    out: Path | None = None  # where the tables go; None: in memory only (the library's default)
    stats: StatsConfig = field(default_factory=StatsConfig)
    reader: ReaderOptions = field(default_factory=ReaderOptions)
    keep_going: bool = False  # analyse the other checkpoints when one fails
    resume: bool = (
        False  # skip checkpoints whose results are already in OUT (same path, size, mtime)
    )
    tensor_histograms: bool = True  # per-tensor histograms as well as per-layer ones
    logs: tuple[Path, ...] = ()  # training logs; empty: look for them in PATH (a folder)
    loss_key: str | None = None
    step_key: str | None = None
    layer_norm_pattern: str | None = None
    gradients: bool = True  # exact gradients for checkpoints saved one step apart

    def __post_init__(self) -> None:
        _check(not (self.resume and self.out is None), "resume needs out= (the folder to resume)")
        if self.layer_norm_pattern is not None:
            try:
                re.compile(self.layer_norm_pattern)
            except re.error as e:
                raise OptionError(f"layer_norm_pattern {self.layer_norm_pattern!r}: {e}") from e

    def updated(self, **kw: Any) -> AnalyzeOptions:
        """A copy with flat keyword options applied: any field of AnalyzeOptions, StatsConfig,
        StageThresholds or ReaderOptions by name (`dip_sample=4096`, `model=...`, `out=...`).

        Raises:
            OptionError: an unknown option name, or a value the option cannot take.
        """
        own, stats, thr, reader = {}, {}, {}, {}
        names = {
            "own": {f.name for f in fields(AnalyzeOptions)},
            "stats": {f.name for f in fields(StatsConfig)},
            "thr": {f.name for f in fields(StageThresholds)},
            "reader": {f.name for f in fields(ReaderOptions)},
        }
        for k, v in kw.items():
            if k in names["own"]:
                own[k] = Path(v) if k == "out" and v is not None else v
            elif k in names["stats"]:
                stats[k] = v
            elif k in names["thr"]:
                thr[k] = v
            elif k in names["reader"]:
                reader[k] = Path(v) if k == "model" and v is not None else v
            else:
                known = sorted(set().union(*names.values()) - {"stats", "reader", "thresholds"})
                raise OptionError(f"unknown option {k!r}; options are: {', '.join(known)}")
        if "logs" in own:
            logs = own["logs"]
            own["logs"] = (Path(logs),) if isinstance(logs, (str, Path)) else tuple(map(Path, logs))
        base = replace(self, **{k: v for k, v in own.items() if k not in ("stats", "reader")})
        st = own.get("stats", base.stats)
        if thr:
            stats["thresholds"] = replace(stats.get("thresholds", st.thresholds), **thr)
        rd = own.get("reader", base.reader)
        return replace(base, stats=replace(st, **stats), reader=replace(rd, **reader))
