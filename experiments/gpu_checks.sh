#!/usr/bin/env bash
# The GPU checks no session could run yet (no device was lent to issues 14, 15 and 20), prepared so
# that ONE call of the device tool measures them all, well inside its 10-minute limit.
#
# Before the call, on the CPU machine, in the repo root (the H200 image lacks polars and diptest;
# everything else adamscope needs is there: torch 2.11+cu130, numba, scipy, pyarrow, typer, rich):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl polars polars-runtime-32 diptest
# Then: run(command="bash experiments/gpu_checks.sh", carry=[".whl"], timeout_s=560)
# Results come back under $OUT (bench.txt, monitor.txt, cuda_tests.txt, spikes.txt).
# A dry run on the CPU machine checks the flow: DEVICE=cpu PARAMS=15M PY=/tmp/venv/bin/python \
#   OUT=/tmp/gpu-dry bash experiments/gpu_checks.sh
set -uo pipefail
OUT=${OUT:-/tmp/gpu-out} DEVICE=${DEVICE:-cuda} PARAMS=${PARAMS:-1B} PY=${PY:-python3}
MODEL=$([ "$DEVICE" = cuda ] && echo gpt125m || echo proxy)
mkdir -p "$OUT"
if [ -d .whl ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv > "$OUT/gpu.txt" 2>&1

# 1. analyze against the read floor on the same reading path (target: analyze >= 70% of the
#    floor's throughput), 1B parameters (~12 GB file on local disk, page cache warm), 3 reps
timeout 240 $PY -m adamscope bench --device $DEVICE --params $PARAMS --reps 3 --no-baseline \
  --workdir /tmp/asbench 2>&1 | tee "$OUT/bench.txt"

# 2. the live monitor's overhead on a GPU training loop (GPT-125M, a flush every 10 steps)
timeout 150 $PY -m adamscope bench --monitor --monitor-model $MODEL --device $DEVICE \
  --every 10 --steps 60 2>&1 | tee "$OUT/monitor.txt"

# 3. the CUDA-only tests (pinned reads, the monitor's device copies, CUDA engine equality)
timeout 90 $PY -m pytest -q tests/monitor/test_cuda.py tests/readers/test_pinned_reads.py \
  -k "cuda or gpu" 2>&1 | tee "$OUT/cuda_tests.txt"

# 4. the spike corpus's GPU grid, as much as is left of the call (a smoke run if little is)
timeout 60 $PY -m experiments.spike_corpus /tmp/spike-corpus-$$ --grid smoke --device $DEVICE \
  --jobs 8 2>&1 | tail -40 > "$OUT/spikes.txt"
echo "done" >> "$OUT/gpu.txt"
