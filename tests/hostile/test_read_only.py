"""The input is never modified: hashes, sizes and mtimes of every file of every fixture family are
the same after analysing all of them (and after inspect, and the readers the registry does not
detect yet run through analyze_checkpoint)."""

from __future__ import annotations

from pathlib import Path

from _hostile_helpers import FIXTURES, cli, tree_hashes

from adamscope.config import AnalyzeOptions, StatsConfig
from adamscope.pipeline.discovery import Found
from adamscope.pipeline.run import analyze_checkpoint

ANALYZED = [
    "torch/adam_names.pt",
    "torch/amsgrad.pt",
    "nanogpt/compiled",
    "nanogpt/mask_buffer",
    "lightning",
    "hf_trainer/gpt2",
    "hf_trainer/llama/checkpoint-10",
    "consecutive/adamw",
    "synthetic",
]


def test_analyze_of_every_family_leaves_the_input_untouched(tmp_path: Path) -> None:
    before = tree_hashes(FIXTURES)
    for i, rel in enumerate(ANALYZED):
        code, err = cli(
            "analyze", FIXTURES / rel, "-o", tmp_path / f"out{i}", "-q", "--device", "cpu"
        )
        assert code == 0, (rel, err)
        cli("inspect", FIXTURES / rel)
    from adamscope.readers.dcp import DCPReader
    from adamscope.readers.deepspeed import DeepSpeedReader, DeepSpeedUniversalReader

    opts = AnalyzeOptions(stats=StatsConfig(device="cpu", dip_sample=1024))
    for reader, rel in [
        (DCPReader, "dcp/fsdp2"),
        (DCPReader, "dcp/torchtitan"),
        (DeepSpeedReader, "deepspeed/zero3_w2_fp32"),
        (DeepSpeedUniversalReader, "deepspeed/universal_zero2"),
    ]:
        analyze_checkpoint(Found(FIXTURES / rel, None, reader), rel=rel, options=opts)
    after = tree_hashes(FIXTURES)
    assert after == before
