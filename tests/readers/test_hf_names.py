"""Trainer checkpoints with frozen parameters, extra buffers and tied heads, with and without
transformers (fixtures/make_hf_names.py): every name is exact or explicitly ambiguous, never wrong.

References: fixtures/hf_names/truth.json, from the live optimizer at save time (names through the
identity of model.named_parameters(), statistics in float64 numpy by fixtures/truth.py); the
reader's streamed m/v must reproduce them to float64 rounding (rel 1e-12, tests/readers/
_truth_helpers.py).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from _truth_helpers import FIXTURES, assert_never_wrong, load_truth

from adamscope.config import ReaderOptions
from adamscope.readers.hf_trainer import HFTrainerReader
from adamscope.readers.naming.match import place_by_tree, subsequence_candidates
from adamscope.vocab import TensorState

FAMILY = FIXTURES / "hf_names"
TRUTH = load_truth("hf_names")
PEFT = "peft/checkpoint-3"
FULL = sorted(k for k in TRUTH if k != PEFT)  # full fine-tuning runs


def _states(
    key: str, *, transformers: bool, monkeypatch: pytest.MonkeyPatch, **options
) -> list[TensorState]:
    if not transformers:
        monkeypatch.setitem(sys.modules, "transformers", None)  # as on a machine without it
    reader = HFTrainerReader(FAMILY / key, options=ReaderOptions(**options))
    return list(reader.iter_tensors())


@pytest.mark.parametrize("transformers", [True, False], ids=["transformers", "without"])
@pytest.mark.parametrize("key", FULL)
def test_names_exact_or_marked(
    key: str, transformers: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        states = _states(key, transformers=transformers, monkeypatch=monkeypatch)
    markers = assert_never_wrong(states, TRUTH[key])
    assert "have no optimizer entry (frozen, or buffers)" in caplog.text
    if markers:
        assert f"{len(markers)} of {len(states)} parameter names are ambiguous" in caplog.text
    if transformers and key != "buffer_untied/checkpoint-3":
        # the model's exact order places a frozen embedding or q_proj in one way only
        assert not markers


def test_frozen_embedding_untied_head(monkeypatch: pytest.MonkeyPatch) -> None:
    # The issue: without transformers, lm_head's state came out as model.embed_tokens.weight.
    key = "frozen_untied/checkpoint-3"
    states = _states(key, transformers=False, monkeypatch=monkeypatch)
    head = next(ts for ts in states if "lm_head" in ts.name)
    assert head.name == "{lm_head|model.embed_tokens}.weight"
    assert head.notes == [
        "name ambiguous (safetensors shapes only): one of lm_head.weight, model.embed_tokens.weight"
    ]


def test_frozen_tied_embedding_is_left_out(monkeypatch: pytest.MonkeyPatch) -> None:
    # tied and frozen: neither the embedding nor the head is in the optimizer; its shape is
    # unique, so nothing else becomes ambiguous because of it
    states = _states("frozen_tied/checkpoint-3", transformers=False, monkeypatch=monkeypatch)
    assert not [ts.name for ts in states if "embed" in ts.name or "lm_head" in ts.name]


def test_extra_buffer_of_a_norm_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    # model.layers.0.extra_scale (16,) sits among the norm weights: their positions are marked
    states = _states("buffer_tied/checkpoint-3", transformers=False, monkeypatch=monkeypatch)
    first_norm = next(ts for ts in states if ts.shape == (16,))
    assert "{" in first_norm.name and "model.layers.0.extra_scale" in first_norm.notes[0]


def test_frozen_final_norm_with_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    # five (16,) norm weights, four in the optimizer: which one is frozen the files cannot tell
    states = _states("buffer_untied/checkpoint-3", transformers=True, monkeypatch=monkeypatch)
    marked = [ts.name for ts in states if "{" in ts.name]
    assert len(marked) == 4 and all("norm" in n for n in marked)
    assert "name ambiguous (model from config.json)" in states[-1].notes[0]


@pytest.mark.parametrize("transformers", [True, False], ids=["transformers", "without"])
def test_peft_names_from_the_adapter_file(
    transformers: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # no model.safetensors, no config.json: the adapter file names the 8 lora tensors; lora_B of
    # q_proj (16, 4) and v_proj (8, 4) differ in shape, their lora_A (4, 16) do not
    with caplog.at_level(logging.WARNING):
        states = _states(PEFT, transformers=transformers, monkeypatch=monkeypatch)
    markers = assert_never_wrong(states, TRUTH[PEFT])
    assert markers == [
        f"base_model.model.model.layers.{i}.self_attn.{{q_proj|v_proj}}.lora_A.weight#{k}"
        for i in (0, 1)
        for k in (1, 2)
    ]
    assert all(ts.name.endswith("lora_B.weight") for ts in states if "{" not in ts.name)
    assert "4 of 8 parameter names are ambiguous" in caplog.text and "--model <base" in caplog.text


def test_peft_with_the_base_config_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    base = FAMILY / "peft" / "base"
    states = _states(PEFT, transformers=True, monkeypatch=monkeypatch, model=base)
    assert not assert_never_wrong(states, TRUTH[PEFT])
    reader = HFTrainerReader(FAMILY / PEFT, options=ReaderOptions(model=base))
    assert reader.describe().notes[0] == (
        f"names: names from adapter_model.safetensors, module order of {base / 'config.json'}"
    )


def test_peft_base_config_without_transformers(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    base = FAMILY / "peft" / "base"
    with caplog.at_level(logging.WARNING):
        states = _states(PEFT, transformers=False, monkeypatch=monkeypatch, model=base)
    assert len(assert_never_wrong(states, TRUTH[PEFT])) == 4
    assert "transformers is not importable" in caplog.text


SKEW = load_truth("hf_skew")["neox/checkpoint-3"]


@pytest.mark.parametrize("transformers", [True, False], ids=["transformers", "without"])
def test_version_skew_keeps_the_training_names(
    transformers: bool, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # written by transformers 4.57.1 (head: embed_out); 5.x builds it as lm_head
    folder = FIXTURES / "hf_skew" / "neox" / "checkpoint-3"
    if not transformers:
        monkeypatch.setitem(sys.modules, "transformers", None)
    with caplog.at_level(logging.WARNING):
        states = list(HFTrainerReader(folder, options=ReaderOptions()).iter_tensors())
    markers = assert_never_wrong(states, SKEW)
    if transformers:
        names = {ts.name for ts in states}
        assert not markers and "embed_out.weight" in names and "lm_head.weight" not in names
        assert "transformers 4.57.1, read with 5." in caplog.text
        assert "lm_head.weight is stored as embed_out.weight" in caplog.text
    else:
        assert "{embed_out|gpt_neox.embed_in}.weight#2" in markers


def test_same_major_version_keeps_the_built_names(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # 5.x writes embed_out.weight back on save although its model (and training code) calls the
    # head lm_head.weight: for a checkpoint of the installed major version the model's names win
    import json
    import shutil

    import transformers

    folder = tmp_path / "checkpoint-3"
    shutil.copytree(FIXTURES / "hf_skew" / "neox" / "checkpoint-3", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["transformers_version"] = transformers.__version__
    (folder / "config.json").write_text(json.dumps(cfg))
    with caplog.at_level(logging.WARNING):
        states = list(HFTrainerReader(folder, options=ReaderOptions()).iter_tensors())
    names = {ts.name for ts in states}
    assert "lm_head.weight" in names and "embed_out.weight" not in names
    assert "read with" not in caplog.text


def test_subsequence_candidates() -> None:
    a, b = (2, 2), (3,)
    assert subsequence_candidates([a, b], [a, b]) == [[0], [1]]
    assert subsequence_candidates([a], [a, b, a]) == [[0, 2]]  # one of two a's is frozen
    assert subsequence_candidates([a, b], [a, a, b]) == [[0, 1], [2]]
    assert subsequence_candidates([b, a], [a, b]) is None  # order must be kept
    assert subsequence_candidates([None, b], [a, a, b]) == [[0, 1], [2]]  # never stepped
    assert subsequence_candidates([a, a, a], [a, a]) is None


def test_place_by_tree_windows() -> None:
    # three same-shape candidates, two positions: the first can be l.0 or l.1, the second l.1 or
    # l.2 (list children in index order); an unwanted shape is reported unused
    shapes = {"l.0.w": (4,), "l.1.w": (4,), "l.2.w": (4,), "buf": (5,)}
    match = place_by_tree([[(4,), (4,)]], [list(shapes)], shapes, source="x", what="the file")
    assert match.ambiguous == {0: ["l.0.w", "l.1.w"], 1: ["l.1.w", "l.2.w"]}
    assert match.names == ["l.{0|1}.w", "l.{1|2}.w"]
    assert match.unused == ["buf"]


@pytest.mark.parametrize("family", ["hf_names", "hf_skew"])
def test_fixture_sizes(family: str) -> None:
    total = sum(f.stat().st_size for f in (FIXTURES / family).rglob("*") if f.is_file())
    assert total < 500_000
