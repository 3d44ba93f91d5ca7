"""Shared helpers for the torch-family reader tests: truth files and streaming a TensorState.

References are the fixtures' truth.json files, written from the live optimizer at save time with
float64 numpy (fixtures/truth.py). The reader's m/v, streamed in small chunks and reassembled, go
through the same `tensor_truth`, so every statistic must agree to float64 rounding (rel 1e-12).
"""

from __future__ import annotations

import importlib.util
import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from adamscope.vocab import TensorState

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
HP_KEYS = ("beta1", "beta2", "eps", "lr", "weight_decay")


@cache
def truth_module() -> Any:
    spec = importlib.util.spec_from_file_location("_fixture_truth", FIXTURES / "truth.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def load_truth(family: str) -> dict[str, Any]:
    return json.loads((FIXTURES / family / "truth.json").read_text())["checkpoints"]


def stream(ts: TensorState, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Reassembles m, v (and vmax) from chunks of at most `chunk` elements, checking coverage."""
    ms, vs, xs, pos = [], [], [], 0
    for start, m, v, vmax in ts.chunks(chunk):
        assert start == pos and 0 < len(m) <= chunk and len(v) == len(m)
        ms.append(m.double().numpy())
        vs.append(v.double().numpy())
        if vmax is not None:
            xs.append(vmax.double().numpy())
        pos += len(m)
    assert pos == ts.numel
    vmax_all = np.concatenate(xs).reshape(ts.shape) if xs else None
    return np.concatenate(ms).reshape(ts.shape), np.concatenate(vs).reshape(ts.shape), vmax_all


def stats(ts: TensorState, chunk: int = 37) -> dict[str, Any]:
    m, v, vmax = stream(ts, chunk)
    hp = ts.hp
    return truth_module().tensor_truth(
        m,
        v,
        step=ts.step,
        beta1=hp.beta1,
        beta2=hp.beta2,
        eps=hp.eps,
        lr=hp.lr,
        weight_decay=hp.weight_decay,
        vmax=vmax,
        bias_correction=hp.bias_correction,
    )


def assert_matches(ts: TensorState, expected: dict[str, Any], *, chunk: int = 37) -> None:
    """Name-level checks (shape, numel, step, hyper-parameters) and every truth statistic."""
    assert list(ts.shape) == expected["shape"]
    assert ts.numel == expected["numel"]
    assert ts.step == expected["step"]
    for key in HP_KEYS:
        assert getattr(ts.hp, key) == expected[key], key
    got = stats(ts, chunk)
    for key, want in expected.items():
        have = got[key]
        if isinstance(want, float) and isinstance(have, float):
            if math.isnan(want):
                assert math.isnan(have), (ts.name, key)
                continue
            assert math.isclose(have, want, rel_tol=1e-12, abs_tol=1e-300), (ts.name, key)
        else:
            assert have == want, (ts.name, key)


def assert_never_wrong(states: list[TensorState], want: dict[str, Any]) -> list[str]:
    """Every name is the truth or a marker (`{a|b}`) whose note lists the truth, every statistic
    matches, and no frozen parameter or buffer of the truth lends its name; returns the markers."""
    truth = list(want["tensors"])
    assert len(states) == len(truth)
    assert len({ts.name for ts in states}) == len(states)
    markers = []
    for ts, name in zip(states, truth, strict=True):
        if ts.name != name:
            assert "{" in ts.name and ts.name not in truth, (ts.name, name)
            (note,) = ts.notes
            assert name in note.split("one of ", 1)[1].split(", "), (ts.name, name)
            markers.append(ts.name)
        assert_matches(ts, want["tensors"][name])
    # a frozen parameter or a buffer never lends its name to another tensor
    assert not {ts.name for ts in states} & {*want.get("frozen", ()), *want.get("buffers", ())}
    return markers


_STREAM_RSS = """
import importlib, json, resource, sys
from adamscope.config import ReaderOptions
module, cls, path, chunk = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
options = ReaderOptions(**json.loads(sys.argv[5]))
reader = getattr(importlib.import_module(module), cls)(path, options=options)
ts = next(reader.iter_tensors())
chunks = ts.chunks(chunk)
next(chunks)  # warm up imports and the allocator
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
m_total, v_total, n = 0.0, 0.0, 0
for start, m, v, _ in chunks:
    m_total += float(m.double().sum()); v_total += float(v.double().sum()); n = start + len(m)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"growth_kb": after - before, "m_total": m_total, "v_total": v_total, "n": n,
                  "numel": ts.numel}))
"""


def stream_rss(
    reader: type, path: Path, *, chunk: int = 1 << 16, options: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Stream the first tensor of `path` with `reader` in a fresh interpreter: peak-RSS growth after
    the first chunk (KiB), the sums of every later chunk's m and v, and the elements reached.
    `options`: ReaderOptions fields (betas/eps for formats that do not store them)."""
    import subprocess
    import sys

    out = subprocess.run(
        [
            sys.executable,
            "-c",
            _STREAM_RSS,
            reader.__module__,
            reader.__name__,
            str(path),
            str(chunk),
            json.dumps(options or {}),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)
