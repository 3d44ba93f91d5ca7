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


# issue 16's formats: the HuggingFaceStorageWriter and Orbax families store no betas/eps
HP_FLAGS = ("--beta1", "0.9", "--beta2", "0.95", "--eps", "1e-8")
FORMATS_16 = {
    "dcp_safetensors/fs_safetensors": (),
    "dcp_safetensors/hf_run": HP_FLAGS,
    "dcp_safetensors/hf_consolidated": HP_FLAGS,
    "olmo_core/run": (),
    "orbax/run": HP_FLAGS,  # tensorstore opens OCDBT read-only: no lock or cache files either
}


def test_safetensors_dcp_olmo_core_and_orbax_leave_the_input_untouched(tmp_path: Path) -> None:
    import importlib.util

    before = tree_hashes(FIXTURES)
    for i, (rel, flags) in enumerate(FORMATS_16.items()):
        if rel.startswith("orbax") and importlib.util.find_spec("tensorstore") is None:
            continue
        out = tmp_path / f"out{i}"
        code, err = cli("analyze", FIXTURES / rel, "-o", out, "-q", "--device", "cpu", *flags)
        assert code == 0, (rel, err)
        code, err = cli("inspect", FIXTURES / rel, *flags)
        assert code == 0, (rel, err)
    assert tree_hashes(FIXTURES) == before
