"""End to end: `analyze` on every committed fixture matches the truth captured from the live optimizer.

The truth files were written by the fixture scripts at save time with float64 numpy (fixtures/truth.py),
independently of adamscope's readers and engine. Tolerance: 1e-5 relative (means near zero are compared
against 1e-5 of the quantity's RMS instead).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest

from adamscope.api import AnalyzeOptions, analyze
from adamscope.config import ReaderOptions

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"

# Files whose optimizer state carries no names: the test gives the model state_dict, as a user would.
MODEL_FOR = {
    "torch/adam_plain.pt": "torch/model_state.pt",
    "torch/amsgrad.pt": "torch/model_state.pt",
}
# MLX does not save betas/eps/bias correction: a user passes what the run used (--beta1 ...).
READER_KW = {
    "mlx/adamw_bc.safetensors": {"beta1": 0.9, "beta2": 0.95, "eps": 1e-6, "bias_correction": True},
}
FAMILIES = [
    "torch",
    "nanogpt",
    "lightning",
    "hf_trainer",
    "synthetic",
    "deepspeed",
    "dcp",
    "mlx",
    "healthy",
]
STATS = ["u_std", "u_rms", "r_std", "r_rms", "suppression", "grad_rms", "m_norm", "v_l1"]
EXACT = ["numel", "zero_v", "nonfinite"]


def _cases() -> list[tuple[str, str]]:
    cases = []
    for fam in FAMILIES:
        truth = FIXTURES / fam / "truth.json"
        if not truth.exists():
            cases.append((fam, "<missing truth.json>"))
            continue
        for ck in json.loads(truth.read_text())["checkpoints"]:
            cases.append((fam, ck))
    return cases


@pytest.mark.parametrize(("family", "checkpoint"), _cases())
def test_analyze_matches_live_optimizer_truth(family: str, checkpoint: str, tmp_path: Path) -> None:
    truth = json.loads((FIXTURES / family / "truth.json").read_text())["checkpoints"][checkpoint]
    model = MODEL_FOR.get(f"{family}/{checkpoint}")
    opts = AnalyzeOptions(
        out=tmp_path / "out",
        reader=ReaderOptions(
            model=FIXTURES / model if model else None, **READER_KW.get(f"{family}/{checkpoint}", {})
        ),
    )
    analyze(FIXTURES / family / checkpoint, options=opts)
    got = pl.read_parquet(tmp_path / "out" / "tensors.parquet")
    rows = {r["tensor"]: r for r in got.iter_rows(named=True)}
    assert sorted(rows) == sorted(truth["tensors"]), (
        "parameter names differ from the training code's"
    )
    for name, want in truth["tensors"].items():
        row = rows[name]
        assert row["step"] == round(want["step"]), name
        assert json.loads(row["shape"]) == list(want["shape"]), name
        for col in EXACT:
            assert row[col] == want[col], (name, col)
        for col in ("beta1", "beta2", "eps", "lr", "weight_decay"):
            if family == "mlx" and col == "weight_decay" and row[col] is None:
                continue  # MLX files do not store weight decay: the table says null, not a guess
            # 1e-7: MLX stores the learning rate as a float32 array
            assert row[col] == pytest.approx(want[col], rel=1e-7), (name, col)
        for col in STATS:
            assert row[col] == pytest.approx(want[col], rel=1e-5, abs=1e-30), (name, col)
        assert row["frac_below_eps"] == pytest.approx(
            want["frac_below_eps"], abs=0.5 / want["numel"]
        )
        for mean, rms in (("u_mean", "u_rms"), ("r_mean", "r_rms")):
            assert math.isclose(row[mean], want[mean], rel_tol=1e-5, abs_tol=1e-5 * want[rms]), (
                name,
                mean,
            )
