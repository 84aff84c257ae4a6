#!/usr/bin/env bash
# GPU checks in one call, on a machine with an NVIDIA GPU and the project installed (pip install -e ".[dev]"):
#
#   1. a GPU must be visible (nvidia-smi) and torch must see it: otherwise stop at once, exit 2;
#   2. the project's imports must work (monai, SimpleITK, vtk, pynrrd, ...): otherwise stop, exit 3;
#   3. the tests marked `cuda` (if pyproject.toml registers that marker; none is registered today, so the
#      device-related test files run instead, on a machine where torch.cuda.is_available() is true);
#   4. the benchmarks on cuda: bench_end_to_end.py --size full, bench_inference.py (512 x 512 x 300,
#      --end-to-end), bench_preprocess.py, bench_batch.py (4 phantom cases: medseg batch on 1, 2, 4 CPU
#      workers and one worker per GPU vs medseg run in a shell loop on CPU and on CUDA; a few minutes),
#      bench_nnunet.py (MedSeg vs nnUNetPredictor on the full-size phantom, mirroring on, both on the GPU).
#
# Steps 3 and 4 all run even when one fails; the script then exits 1 and names the failed steps.
#
#   bash benchmarks/gpu_check.sh                    # PYTHON=python3 by default
#   PYTHON=.venv/bin/python E2E_ARGS="--repeat 2" bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
export PYTHONPATH="MedSegExtension${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

say() { printf '\n=== gpu_check: %s ===\n' "$*"; }

# --- 1. a GPU, seen by the driver and by torch
say "GPU"
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: FAILED: nvidia-smi not found: no NVIDIA driver on this machine" >&2
    exit 2
fi
if ! nvidia-smi -L; then
    echo "gpu_check: FAILED: nvidia-smi sees no GPU" >&2
    exit 2
fi
if ! "$PY" - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"gpu_check: FAILED: torch {torch.__version__} (CUDA build {torch.version.cuda}) sees no CUDA device")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.device_count()} device(s): "
      f"{torch.cuda.get_device_name(0)}")
EOF
then
    exit 2
fi

# --- 2. the project's imports
say "imports"
if ! "$PY" - <<'EOF'
import importlib
import sys

missing = []
for name in ("numpy", "scipy", "monai", "SimpleITK", "vtk", "nrrd", "slicerio", "pydicom", "highdicom",
             "jsonschema", "matplotlib", "psutil", "pytest", "medseg"):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        missing.append(f"{name} ({exc})")
if missing:
    sys.exit("gpu_check: FAILED: cannot import " + "; ".join(missing) + ' - install the project: pip install -e ".[dev]"')
print("all imports found")
EOF
then
    exit 3
fi

failed=()
run() {  # run NAME CMD...: run a step, remember it when it fails
    local name="$1"
    shift
    say "$name"
    echo "+ $*"
    if ! "$@"; then
        failed+=("$name")
        echo "gpu_check: step '$name' FAILED" >&2
    fi
}

# --- 3. tests
if "$PY" -m pytest --markers -p no:cacheprovider 2>/dev/null | grep -q '^@pytest.mark.cuda'; then
    run "tests marked cuda" "$PY" -m pytest -q -p no:cacheprovider -m cuda
else
    echo "gpu_check: no 'cuda' pytest marker is registered in pyproject.toml; running the device-related tests"
    run "device tests" "$PY" -m pytest -q -p no:cacheprovider \
        Testing/test_preprocess_device.py Testing/test_inference_memory.py Testing/test_inference_sliding_window.py \
        Testing/test_preprocess_pipeline.py Testing/test_models_runner.py Testing/test_bench_end_to_end.py
fi

# --- 4. benchmarks on cuda
# shellcheck disable=SC2086  # E2E_ARGS is a list of words
run "bench_end_to_end cuda full" "$PY" benchmarks/bench_end_to_end.py --device cuda --size full ${E2E_ARGS:-}
run "bench_inference cuda" "$PY" benchmarks/bench_inference.py --device cuda --size 512 512 300 --end-to-end
run "bench_preprocess cuda" "$PY" benchmarks/bench_preprocess.py --device cuda --repeat 3
run "bench_batch cuda" "$PY" benchmarks/bench_batch.py --gpu on --cases 4
run "bench_nnunet cuda" "$PY" benchmarks/bench_nnunet.py --device cuda --mirror

if ((${#failed[@]})); then
    echo "gpu_check: FAILED steps: ${failed[*]}" >&2
    exit 1
fi
say "all steps passed"
