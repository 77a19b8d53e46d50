#!/usr/bin/env bash
# Every GPU check of issue 12 in one device run (~6-8 minutes on an H200), or, with --smoke, the
# same steps on this machine's CPU at toy sizes to prove the script runs end to end.
#
#   device:  bash bench/gpu_check.sh          (carry .whl and .gpu, made by bench/gpu_prepare.sh)
#   here:    bash bench/gpu_check.sh --smoke  (results under a temporary folder, never bench/results)
#
# Steps, each under its own timeout so one that hangs cannot eat the others' time (at most
# 490 s together; expected ~5 min; give the device tool timeout_s=540):
#   1. CUDA tests: every test marked gpu in the files that have them, and batched MTCNN's CUDA test
#   2. bench/wm_torch.py       batched watermark, batch 16 of 512²: <= 5 ms/image, bit-exact vs numpy
#   3. bench/face_gpu.py       stock MTCNN vs ours, batch 1/16/64: <= 8 ms at 1, >= 1500 img/s, >= 10x
#   4. bench/index_search.py   1M templates: CUDA <= 2 ms per query
#   5. bench/gate_overhead.py  the whole gate on CUDA around a 1-step SD-Turbo-architecture
#                              pipeline (random weights): overhead <= 10 % (skip with GATE=0)
# Results: $OUT/gpu_results.tgz (all JSON + markdown, re-packed after every step, so a run cut short
# still returns what it finished) and $OUT/gpu_check.log; the markdown tables are printed last.
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=0
[ "${1:-}" = "--smoke" ] && SMOKE=1
if [ "$SMOKE" = 1 ]; then
    PY=${PYTHON:-.venv/bin/python}
    OUT=${OUT:-$(mktemp -d /tmp/gpu-check-smoke.XXXXXX)}
else
    PY=${PYTHON:-python3}
    OUT=${OUT:?set OUT (the device tool sets it)}
fi
# Results are written outside $OUT and packed into one archive: the device returns 8 files at most.
RESULTS=$(mktemp -d /tmp/gpu-check-results.XXXXXX)/results
LOG="$OUT/gpu_check.log"
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1
START=$SECONDS
FAILED=()

pack() { tar -czf "$OUT/gpu_results.tgz" -C "$(dirname "$RESULTS")" results 2>/dev/null; }
step() {  # step NAME SECONDS COMMAND...: run, time, record failures, re-pack the results
    local name=$1 limit=$2
    shift 2
    echo; echo "=== $name (limit ${limit}s, at $((SECONDS - START))s)"
    timeout -k 10 "$limit" "$@"
    local rc=$?
    [ $rc -ne 0 ] && FAILED+=("$name (exit $rc)")
    pack
}

main() {
if [ "$SMOKE" = 0 ]; then
    # The packages and weights the device lacks (bench/gpu_prepare.sh), and the repository's
    # folders under the consentry namespace they are installed as (no pip install there).
    "$PY" - <<'EOF' || { echo "cannot unpack .whl/.gpu: run bench/gpu_prepare.sh and carry both"; return 2; }
import lzma, shutil, tarfile
from pathlib import Path
with tarfile.open(".whl/site.tar.xz") as tar:
    tar.extractall("/tmp", filter="data")
models = Path("/tmp/site/face_recognition_models/models")
models.mkdir(parents=True, exist_ok=True)
name = "dlib_face_recognition_resnet_model_v1.dat"
with lzma.open(f".gpu/{name}.xz") as src, open(models / name, "wb") as dst:
    shutil.copyfileobj(src, dst)
ns = Path("/tmp/site/consentry")
ns.mkdir(exist_ok=True)
for pkg in ("gateway", "detectors", "provenance", "generation", "policies"):
    (ns / pkg).unlink(missing_ok=True)
    (ns / pkg).symlink_to(Path(pkg).resolve())
EOF
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
    export CONSENTRY_FACES_DIR=.gpu/faces
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader
    "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA'; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || return 2
    DEVICE=cuda
else
    DEVICE=cpu
    echo "SMOKE run on the CPU: proves the script; no figure below is a GPU figure"
fi

GPU_FILES=$(grep -rl "mark.gpu" tests --include="test_*.py" | sort | tr '\n' ' ')
step "pytest -m gpu" 60 "$PY" -m pytest -q -p no:cacheprovider -rs --continue-on-collection-errors -m gpu $GPU_FILES
step "pytest batched MTCNN on CUDA" 40 "$PY" -m pytest -q -p no:cacheprovider -rs \
    tests/detectors/test_mtcnn_batched.py -k cuda

# The content classifier (onnxruntime + the 24 MB open_nsfw wheel) and the prompt model (90 MB)
# do not fit the carry limit beside the rest: the gate of this run goes without them, and their
# CPU cost (bench/results/content_classifier.md, prompt_rules.md) is added to its overhead by hand.
POLICY=$(dirname "$RESULTS")/gpu-policy.toml
printf 'version = "gpu-check"\n[prompt]\ndeny_terms = ["nude"]\n[content]\nclassifier = "none"\n' > "$POLICY"

if [ "$SMOKE" = 1 ]; then
    step "wm_torch" 300 "$PY" bench/wm_torch.py --smoke --device cpu --results-dir "$RESULTS"
    step "face_gpu" 300 "$PY" bench/face_gpu.py --device cpu --batches 1,2 --images 4 --repeats 1 \
        --results-dir "$RESULTS"
    step "index_search" 300 "$PY" bench/index_search.py --identities 2000 --repeats 5 --check-queries 20 \
        --results-dir "$RESULTS"
    step "gate_overhead" 600 "$PY" bench/gate_overhead.py --smoke --policy "$POLICY" --results-dir "$RESULTS"
else
    step "wm_torch" 45 "$PY" bench/wm_torch.py --device cuda --batch 16 --size 512 --results-dir "$RESULTS"
    step "face_gpu" 90 "$PY" bench/face_gpu.py --device cuda --batches 1,16,64 --images 256 --repeats 10 \
        --results-dir "$RESULTS"
    step "index_search" 75 "$PY" bench/index_search.py --repeats 40 --check-queries 50 --results-dir "$RESULTS"
    if [ "${GATE:-1}" = 1 ]; then
        step "gate_overhead" 180 "$PY" bench/gate_overhead.py --device cuda --skip-sd15 --repeats 3 \
            --policy "$POLICY" --work /tmp/gate-models --results-dir "$RESULTS"
    else
        echo "gate overhead skipped (GATE=0)"
    fi
fi

echo; echo "=== summary after $((SECONDS - START)) s"
for md in "$RESULTS"/*.md; do [ -f "$md" ] && { echo; cat "$md"; }; done
pack
if [ ${#FAILED[@]} -gt 0 ]; then
    printf 'FAILED: %s\n' "${FAILED[@]}"
    return 1
fi
echo "all steps passed; results in $OUT/gpu_results.tgz"
}

main 2>&1 | tee "$LOG"
exit "${PIPESTATUS[0]}"
