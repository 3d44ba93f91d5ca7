"""Render docs/tables.md from the schema: `python -m adamscope.tables.docs > docs/tables.md`."""

from __future__ import annotations

from adamscope.tables.schema import TABLES

_INTRO = {
    "tensors": "One row per parameter tensor per checkpoint.",
    "layers": "One row per layer per checkpoint: the layer's tensors merged (moments exactly, the dip "
    "on a numel-weighted sample).",
    "histograms": "Long format, non-empty bins only. Linear u and r bins span the exact Adam bound on "
    "|r| for the tensor's (beta1, beta2, step), so no value is clipped; the log10 quantities use fixed "
    "bins per decade.",
    "losses": "Training-log rows (trainer_state.json, TensorBoard, JSONL/CSV), when a log is found or given.",
    "grad_norms": "Per-layer gradient norms logged during training (TensorBoard scalars or JSONL keys "
    "matching `--layer-norm-pattern`), when present.",
    "gradients": "Exact gradients of every pair of analysed checkpoints whose stored steps differ by one "
    "(`analyze`), or of the pair given to `adamscope gradients A B`: one row per tensor (`level = "
    "tensor`) and per layer. Formulas and the consistency check: docs/gradients.md.",
    "diff": "`adamscope diff A B -o OUT`: per layer, the relative L2 change of each quantity from A to B.",
    "moved_first": "`adamscope moved-first RUN -o OUT`: layers ranked by the first pair of neighbouring "
    "checkpoints whose change exceeds k times the layer's own median change.",
}


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def render() -> str:
    out = [
        "# Output tables",
        "",
        "Generated from `adamscope/tables/schema.py` (`python -m adamscope.tables.docs > docs/tables.md`);",
        "a test keeps the two in step. Notation: m = exp_avg, v = exp_avg_sq, t = step,",
        "m_hat = m / (1 - beta1^t), v_hat = v / (1 - beta2^t) (torch convention; see docs/theory.md).",
        "",
    ]
    for table, cols in TABLES.items():
        out += [
            f"## {table}.parquet",
            "",
            _INTRO[table],
            "",
            "| column | type | meaning |",
            "|---|---|---|",
        ]
        out += [f"| `{c.name}` | {c.dtype} | {_cell(c.doc)} |" for c in cols]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(render(), end="")
