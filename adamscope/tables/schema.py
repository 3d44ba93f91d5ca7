"""Every output column: dtype, unit and formula. docs/tables.md is generated from this module."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # polars dtype name
    doc: str


_ID = [
    Column(
        "checkpoint",
        "str",
        "checkpoint path relative to the analysed PATH ('.' when PATH is the checkpoint)",
    ),
    Column("step", "i64", "optimizer step stored in the checkpoint (t, already incremented)"),
]

_STATS = [
    Column("numel", "i64", "number of coordinates (padding excluded)"),
    Column(
        "u_mean",
        "f64",
        "mean of the Adam update u = m_hat / (sqrt(v_hat) + eps) over finite coordinates",
    ),
    Column("u_std", "f64", "population standard deviation (ddof=0) of u"),
    Column("u_rms", "f64", "sqrt(mean(u^2))"),
    Column("r_mean", "f64", "mean of the ratio r = m_hat / sqrt(v_hat) (r = 0 where v == 0)"),
    Column("r_std", "f64", "population standard deviation of r"),
    Column("r_rms", "f64", "sqrt(mean(r^2))"),
    Column(
        "suppression",
        "f64",
        "u_rms / r_rms: 1 when eps is negligible, -> 0 when eps swallows the update",
    ),
    Column("grad_rms", "f64", "gradient RMS estimate sqrt(mean(v_hat))"),
    Column("frac_below_eps", "f64", "share of coordinates with sqrt(v_hat) < eps"),
    Column("m_norm", "f64", "L2 norm of the raw exp_avg"),
    Column("v_l1", "f64", "sum of the raw exp_avg_sq (Li et al.'s variance l1)"),
    Column(
        "zero_v",
        "i64",
        "coordinates with v == 0 (r set to 0 there; u = m_hat/eps as torch computes it)",
    ),
    Column(
        "nonfinite", "i64", "coordinates whose m or v is NaN/Inf (excluded from every statistic)"
    ),
    Column("u_min", "f64", "minimum of u"),
    Column("u_max", "f64", "maximum of u"),
    Column("r_min", "f64", "minimum of r"),
    Column("r_max", "f64", "maximum of r"),
    Column("dip_u", "f64", "Hartigan's dip of u on a uniform sample of dip_n coordinates"),
    Column("dip_r", "f64", "Hartigan's dip of r on the same sample"),
    Column("dip_p_u", "f64", "dip test p-value of dip_u for a sample of dip_n points"),
    Column("dip_p_r", "f64", "dip test p-value of dip_r for a sample of dip_n points"),
    Column(
        "dip_n",
        "i64",
        "size of the sample the dip was computed on (all coordinates when numel <= it)",
    ),
    Column("bc_u", "f64", "Sarle's bimodality coefficient of u (> 5/9 suggests bimodality)"),
    Column("bc_r", "f64", "Sarle's bimodality coefficient of r"),
    Column(
        "null_r_std",
        "f64",
        "std of r at this step for gradients independent across steps (Gaussian, exact): the "
        "null model of docs/stages.md; 0.226 for (0.9, 0.95) in steady state",
    ),
    Column(
        "null_dip_q99",
        "f64",
        "99% quantile of dip(r) on dip_n points under the null (before judge_from_step: the "
        "Monte Carlo envelope over Gaussian, +-1 and t3 gradients; from it on: diptest's "
        "unimodal reference)",
    ),
    Column(
        "dip_p_null",
        "f64",
        "p-value of dip_r against the null at this step and sample size (from judge_from_step "
        "on: diptest's p-value, valid against the unimodal null); r is bimodal when dip_r >= "
        "thresholds.dip and dip_p_null < thresholds.dip_p",
    ),
    Column(
        "judge_from_step",
        "i64",
        "first step from which the null of r is unimodal for a dip on dip_n points (before it: "
        "stage too_early); null when no step qualifies",
    ),
    Column(
        "rho_hat",
        "f64",
        "the gradients' time correlation rho (paper Section 4.2: g = rho c_i + e_(i,t)) that "
        "gives this r_rms at this step; 0 at or below the null, inf at the limit |r| = 1",
    ),
    Column("rho_lo", "f64", "low end of rho_hat's interval (model spread +- 1.96 standard errors)"),
    Column("rho_hi", "f64", "high end of rho_hat's interval"),
    Column(
        "stage_snapshot",
        "str",
        "the theory's stage from this checkpoint alone: too_early | healthy | vanishing | "
        "primed | unstable (docs/stages.md); null when numel < min_numel",
    ),
    Column(
        "stage",
        "str",
        "the verdict: stage_snapshot judged with the run's history; a snapshot 'unstable' "
        "without vanishing/primed/unstable at the previous judged checkpoint is 'correlated' "
        "(sign-descent-like: one checkpoint cannot tell)",
    ),
    Column("stage_reason", "str", "why: the numbers the rule looked at, in one line"),
]

# Written by adamscope.monitor from inside training (null in analyze's tables: a checkpoint does
# not hold the gradient of its last step). adamscope/monitor/live.py has the definitions.
_LIVE = [
    Column(
        "g_norm",
        "f64",
        "monitor only: L2 norm of p.grad at the step (after unscaling/clipping; coupled L2 decay "
        "not included)",
    ),
    Column("g_rms", "f64", "monitor only: RMS of p.grad (compare grad_rms, the v_hat estimate)"),
    Column(
        "g2_vhat_mean",
        "f64",
        "monitor only: mean of g^2 / v_hat over coordinates with v_hat > 0 (Bai et al. 2025)",
    ),
    Column(
        "g2_vhat_q50",
        "f64",
        "monitor only: median of g^2 / v_hat (from a 20-bins-a-decade histogram: within 12%)",
    ),
    Column("g2_vhat_q90", "f64", "monitor only: 90% quantile of g^2 / v_hat (same histogram)"),
    Column("g2_vhat_q99", "f64", "monitor only: 99% quantile of g^2 / v_hat (same histogram)"),
    Column("g2_vhat_gt1", "f64", "monitor only: share of coordinates with g^2 / v_hat > 1"),
    Column(
        "update_rms",
        "f64",
        "monitor only: RMS of the parameter change of the step, lr * u plus AdamW's "
        "lr * wd * theta (the update norm that doubles before spikes in Marin 32B)",
    ),
    Column(
        "update_grad_cos",
        "f64",
        "monitor only: sum(u g) / sqrt(sum u^2 sum g^2), the update's cosine with p.grad",
    ),
]
LIVE_COLUMNS = tuple(c.name for c in _LIVE)

_HP = [
    Column("beta1", "f64", "Adam beta1 of the parameter's group"),
    Column("beta2", "f64", "Adam beta2"),
    Column("eps", "f64", "Adam eps"),
    Column(
        "lr",
        "f64",
        "learning rate of the group: as stored in a checkpoint (already advanced by the "
        "scheduler); the monitor records the lr the step used",
    ),
    Column("weight_decay", "f64", "weight decay of the group"),
]

TENSORS = [
    *_ID,
    Column("tensor", "str", "the training code's parameter name (named_parameters() spelling)"),
    Column("layer", "str", "layer the tensor belongs to: embedding, block.<i>, head, other"),
    Column(
        "depth", "i64", "layer position in depth order (embedding 0, block i -> i + 1, head last)"
    ),
    Column("shape", "str", "tensor shape, e.g. '[768, 3072]'"),
    Column(
        "dtype",
        "str",
        "dtype of exp_avg as stored; quantized state names its scheme and block size: "
        "bnb-8bit-b<block> (bitsandbytes 8-bit blockwise), torchao-8bit-b<block>, "
        "torchao-4bit-b<block>, torchao-fp8-b<block> (read by dequantizing the stored codes)",
    ),
    Column(
        "v_dtype",
        "str",
        "dtype of exp_avg_sq as stored, in the same spelling (v quantized when it is a scheme)",
    ),
    *_HP,
    *_STATS,
    *_LIVE,
]

LAYERS = [
    *_ID,
    Column("layer", "str", "layer name (see tensors.layer)"),
    Column("depth", "i64", "layer position in depth order"),
    Column("n_tensors", "i64", "parameter tensors merged into this layer"),
    *_STATS,
    *_LIVE,
]

HISTOGRAMS = [
    *_ID,
    Column("level", "str", "'tensor' or 'layer'"),
    Column("tensor", "str", "parameter name (null on layer rows)"),
    Column("layer", "str", "layer name"),
    Column("quantity", "str", "u | r | log10_abs_u | log10_abs_r | log10_sqrt_vhat"),
    Column("lo", "f64", "bin lower edge"),
    Column("hi", "f64", "bin upper edge"),
    Column(
        "count",
        "i64",
        "coordinates in [lo, hi); only non-empty bins are stored. lo = -inf / hi = +inf "
        "mark under/overflow of the linear range; on log10 quantities the bin (-inf, -45) holds exact zeros",
    ),
]

LOSSES = [
    Column("step", "i64", "training step"),
    Column("loss", "f64", "training loss"),
    Column("perplexity", "f64", "exp(loss)"),
    Column("grad_norm", "f64", "global gradient norm when logged"),
    Column("lr", "f64", "learning rate when logged"),
    Column("source", "str", "where the row came from (file)"),
]

GRAD_NORMS = [
    Column("step", "i64", "training step"),
    Column("name", "str", "logged key of a per-layer (or per-tensor) gradient norm"),
    Column("grad_norm", "f64", "the logged norm: the exact heatmap source when present"),
    Column("source", "str", "where the row came from (file)"),
]

_GRAD_ID = [
    Column("checkpoint", "str", "path of B (the later checkpoint)"),
    Column("prev_checkpoint", "str", "path of A"),
    Column("step", "i64", "stored step of B (t)"),
    Column("prev_step", "i64", "stored step of A"),
    Column("window", "i64", "k = step - prev_step (1 with assume_consecutive)"),
    Column("exact", "bool", "k == 1: the columns below are exact; else window estimates"),
]
_GRAD_STATS = [
    Column("numel", "i64", "coordinates"),
    Column("grad_norm", "f64", "exact: sqrt(sum g^2), g from m; window: sqrt(sum g2_win)"),
    Column("grad_rms", "f64", "grad_norm / sqrt(numel - nonfinite)"),
    Column(
        "window_grad_norm",
        "f64",
        "sqrt(sum g_win^2): the norm of the EMA-weighted mean gradient over the window "
        "(= grad_norm when exact)",
    ),
    Column("grad_rms_vhat", "f64", "sqrt(mean(v_hat)) of B: the usual EMA estimate"),
    Column(
        "update_grad_cos",
        "f64",
        "sum(u g) / sqrt(sum u^2 sum g^2), u of B (torch convention), g exact or g_win",
    ),
    Column("g2_mismatch", "f64", "||g1^2 - q1|| / ||q1||: g from m squared vs g^2 from v"),
    Column("g2_mismatch_floor", "f64", "what rounding of the stored EMAs can explain of it"),
    Column("g2_negative_frac", "f64", "share of coordinates whose g^2 from v is negative"),
    Column(
        "consistent",
        "bool",
        "g2_mismatch <= 3 x floor and no negative g^2: a genuine consecutive, unmodified pair",
    ),
    Column(
        "nonfinite",
        "i64",
        "coordinates with a NaN/Inf in m, v (either checkpoint) or theta; excluded from every sum",
    ),
]
_GRAD_KIND = Column(
    "grad_kind",
    "str",
    "loss (gradient of the loss) | loss+wd (coupled Adam: includes wd*theta) | unknown (old "
    "file, decayed tensor) | mixed (layer rows mixing kinds)",
)
GRADIENT_TENSORS = [
    *_GRAD_ID,
    Column("tensor", "str", "parameter name"),
    Column("layer", "str", "embedding, block.<i>, head, other"),
    Column("depth", "i64", "layer position in depth order"),
    _GRAD_KIND,
    *_GRAD_STATS,
]
GRADIENT_LAYERS = [
    *_GRAD_ID,
    Column("layer", "str", "layer name"),
    Column("depth", "i64", "layer position in depth order"),
    Column("n_tensors", "i64", "tensors merged into the layer row"),
    _GRAD_KIND,
    *_GRAD_STATS,
]
GRADIENTS = [
    Column("level", "str", "'tensor' or 'layer'"),
    *_GRAD_ID,
    Column("tensor", "str", "parameter name (null on layer rows)"),
    Column("layer", "str", "embedding, block.<i>, head, other"),
    Column("depth", "i64", "layer position in depth order"),
    _GRAD_KIND,
    *_GRAD_STATS,
    Column("n_tensors", "i64", "tensors merged into a layer row (null on tensor rows)"),
]

DIFF_QUANTITIES = ("m", "v", "u", "r", "weight")
_CHANGE_DOC = {
    "m": "relative L2 change ||X_B - X_A|| / ||X_A|| of the raw exp_avg",
    "v": "of the raw exp_avg_sq",
    "u": "of u, each checkpoint with its own step",
    "r": "of r = m_hat / sqrt(v_hat), each with its own step",
    "weight": "of the model weights stored with the optimizer state; null when absent",
}
DIFF = [
    Column("checkpoint_a", "str", "path of A"),
    Column("checkpoint_b", "str", "path of B"),
    Column("step_a", "i64", "stored step of A"),
    Column("step_b", "i64", "stored step of B"),
    Column("layer", "str", "layer name"),
    Column("depth", "i64", "layer position in depth order"),
    Column("n_tensors", "i64", "tensors of the layer found in both"),
    *[Column(f"{q}_change", "f64", _CHANGE_DOC[q]) for q in DIFF_QUANTITIES],
    Column("stage_a", "str", "the layer's stage in A (null with stages off)"),
    Column("stage_b", "str", "the layer's stage in B"),
    Column("stage_changed", "bool", "stage_a != stage_b (nulls compare as values)"),
]
MOVED_FIRST = [
    Column("rank", "u32", "1 = moved first"),
    Column("layer", "str", "layer name"),
    Column("depth", "i64", "layer position in depth order"),
    Column("first_step", "i64", "step_b of the first pair above k x median (null: never)"),
    Column("first_change", "f64", "the change at that pair"),
    Column("median_change", "f64", "the layer's median change over the run"),
    Column("ratio", "f64", "first_change / median_change"),
    Column("max_change", "f64", "the largest change"),
    Column("max_step", "i64", "where it happened (step_b)"),
]

TABLES = {
    "tensors": TENSORS,
    "layers": LAYERS,
    "histograms": HISTOGRAMS,
    "losses": LOSSES,
    "grad_norms": GRAD_NORMS,
    "gradients": GRADIENTS,
    "diff": DIFF,
    "moved_first": MOVED_FIRST,
}
# Parts of a table built separately before they are stacked (gradients: tensor and layer rows).
PARTS = {"gradient_tensors": GRADIENT_TENSORS, "gradient_layers": GRADIENT_LAYERS}


def columns(table: str) -> list[Column]:
    """The columns of a table (or of a part of one, see PARTS), in order."""
    return TABLES[table] if table in TABLES else PARTS[table]


def names(table: str) -> list[str]:
    return [c.name for c in columns(table)]
