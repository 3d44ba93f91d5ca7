"""Options shared by the CLI and the library, as frozen dataclasses."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

Convention = Literal["torch", "paper"]


@dataclass(frozen=True, kw_only=True)
class StageThresholds:
    """Thresholds of the theory's stages (THEORY.md; docs/stages.md says how they were chosen)."""

    suppression: float = 0.5  # u is "suppressed" when rms(u)/rms(r) < this
    dip: float = 0.01  # r is "bimodal" when dip(r) >= this ...
    dip_p: float = 0.01  # ... and the dip test's p-value on its sample < this
    min_numel: int = 1000  # tensors/layers smaller than this get no stage


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
