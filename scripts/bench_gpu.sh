#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one go: the paper's CIFAR model, every training option, the eval path,
# and one bf16 row of the paper's ImageNet 128px model (model=sngan_128, 1000 classes).
#   bash scripts/bench_gpu.sh [EXTRA OVERRIDES OR BENCH FLAGS...]   (JSON files land in ./bench_out)
#   ROWS="sngan128_bf16 packing" bash scripts/bench_gpu.sh             (only those rows, no tests: a rerun after a cut)
#   ROW_TIMEOUT=240 PACK_TIMEOUT=240 PYTEST_TIMEOUT=150: each row's limit in seconds (the packing rows' own, the
#   CUDA tests'), so that one row cannot eat a call
# With $OUT set (the lent GPU machines, which return at most 8 files from $OUT), every row's files and the whole
# log go to /tmp/bench_rows (BENCH_ROWS_DIR) and are packed into $OUT/bench_rows.tgz after each row: a call cut at
# its limit still returns every row finished before the cut (a rerun on the same machine adds to them).
# On a machine that has PyTorch but not this project's other dependencies and no network (the lent GPU
# machines), carry them as wheels in .whl/ (how: BENCHMARKS.md, "Filling the GPU rows").
# Exit status 1 if any configuration failed (the others still run).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:+${BENCH_ROWS_DIR:-/tmp/bench_rows}}
out=${out:-$PWD/bench_out}
mkdir -p "$out"
pack() {  # the rows so far into $OUT's one archive (written aside, then renamed: never a half archive)
    [ -n "${OUT:-}" ] || return 0
    tar -czf "$OUT/.bench_rows.tgz" -C "$out" . && mv -f "$OUT/.bench_rows.tgz" "$OUT/bench_rows.tgz"
}
exec > >(tee -a "$out/log.txt") 2>&1  # the whole log beside the rows (the call's reply keeps only its tail)
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} || exit 1
fi
# the config groups are the package `cgan_bench.conf` only once installed (importing from the repo is not enough)
python3 -c "from importlib.resources import files; files('cgan_bench.conf')" 2>/dev/null \
    || python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit 1
python3 - <<'PY' || exit 1
import importlib, sys
def found(name):  # a dotted name's parent must import to be looked up
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False
# the launcher plugins: `python -m cgan_bench` imports both at start-up (cgan_bench/launch.py), the CUDA tests run it
missing = [m for m in ("hydra", "omegaconf", "torch_fidelity", "filelock", "tabulate", "yaml", "tqdm", "numpy",
                       "pandas", "scipy", "sklearn", "PIL", "joblib", "hydra_plugins.hydra_joblib_launcher",
                       "hydra_plugins.hydra_submitit_launcher") if not found(m)]
if missing:
    sys.exit(f"missing Python packages: {', '.join(missing)} (carry them as wheels in .whl/, see BENCHMARKS.md)")
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available())
PY
(nvidia-smi || true) > "$out/nvidia-smi.txt" 2>&1

failed=0
bench() {  # bench NAME ARGS...: one JSON file per configuration; a failure is recorded and the rest go on
    local name=$1; shift
    if [ -n "${ROWS:-}" ] && [[ " $ROWS " != *" $name "* ]]; then return 0; fi  # ROWS="a b": only those rows
    echo "== $name: $*"
    # each row under its own limit (ROW_TIMEOUT seconds, default 240), so that one slow compile or capture cannot
    # use up a 10-minute device call that the rows after it need; a row cut this way is recorded as failed
    if timeout --kill-after=10 "${ROW_TIMEOUT:-240}" python3 -m cgan_bench.bench dataset=cifar10 "$@" --json \
            >"$out/$name.json" 2>"$out/$name.err"; then
        python3 - "$out/$name.json" <<'PY'
import json, sys
result = json.load(open(sys.argv[1]))
for row in result["train"]:
    print("  ", {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items() if k != "profile"})
    if "error" in row.get("profile", {}):
        print("   profile failed:", row["profile"]["error"])
    elif "profile" in row:
        p = row["profile"]
        print(f"   profile: {p['wall_ms_per_it']:.1f} ms/it wall, {p['device_kernels_per_it']} kernels, "
              f"{p['device_busy_ms_per_it']} ms busy, {p['launch_calls_per_it']} launch calls per it; top:",
              ", ".join(f"{t['name'][:40]} {100 * t['share']:.0f}%" for t in p["top"][:6]))
if "eval" in result:
    print("   eval", {k: round(v, 2) if isinstance(v, float) else v for k, v in result["eval"].items()})
if "metric_math" in result:
    print("   metric_math", {k: round(v, 2) if isinstance(v, float) else v for k, v in result["metric_math"].items()})
for row in result.get("frechet", []):
    print("   frechet", {k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
for row in result.get("packing", {}).get("rows", []):
    print("   packing", {k: round(v, 2) if isinstance(v, float) else [round(x, 2) for x in v] if k == "per_job_it_per_s"
                         else v for k, v in row.items() if k != "per_job"})
PY
    else
        status=$?
        [ $status -eq 124 ] || [ $status -eq 137 ] && echo "cut at ROW_TIMEOUT=${ROW_TIMEOUT:-240} s" >>"$out/$name.err"
        echo "   FAILED, exit status $status (see $name.err)"; failed=1
    fi
    pack
}
cuda_tests() {  # the graph path's correctness on this GPU (tests/test_cuda_graph.py; the lent machines have pytest)
    # Their image's pytest plugins (xdist, benchmark, cov, ...) are not loaded: these tests need none. cuBLAS's fixed
    # workspace makes its results reproducible across streams (the capture's side stream vs replays).
    if [ -n "${ROWS:-}" ] || ! python3 -c "import pytest" 2>/dev/null; then return 0; fi  # ROWS: some rows only
    echo "== pytest -m cuda (at most ${PYTEST_TIMEOUT:-150} s)"
    CUBLAS_WORKSPACE_CONFIG=:4096:8 PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 timeout --kill-after=10 "${PYTEST_TIMEOUT:-150}" \
        python3 -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda_graph.py >"$out/pytest_cuda.txt" 2>&1
    local status=$?
    tail -n 30 "$out/pytest_cuda.txt"
    [ $status -eq 0 ] || { echo "   pytest FAILED, exit status $status (124: cut at PYTEST_TIMEOUT)"; failed=1; }
    pack
}
# First what the issues' acceptance reads, so that a call's time limit cuts the least useful rows: the eager bf16
# step (what the graph path is compared with) with its profile, the graphed single run (issue 10: >= 25 it/s),
# the graphed jobs packed onto this GPU (>= 50 it/s aggregate), eval=paper's final evaluation (<= 30 s), the
# 128px ImageNet model's step (issue 13); then the CUDA tests; then the options one by one, compiled rows last.
bench bf16 --profile --heads projection train.precision=bf16 "$@"
bench bf16_cuda_graph --heads projection train.precision=bf16 train.cuda_graph=true "$@"
ROW_TIMEOUT=${PACK_TIMEOUT:-240} bench packing_cuda_graph --heads projection train.precision=bf16 train.cuda_graph=true --jobs 1,2,4 --pack-seconds 5 "$@"
bench eval_paper --heads "" --eval --frechet --metric-math "$@"
bench sngan128_bf16 --heads projection model=sngan_128 dataset.resolution=128 train=paper_imagenet train.precision=bf16 --n-classes 1000 "$@"
cuda_tests
bench bf16_cuda_graph_joint --profile --heads projection train.precision=bf16 train.cuda_graph=true train.joint_d_forward=true "$@"
bench bf16_joint --heads projection train.precision=bf16 train.joint_d_forward=true "$@"
bench fp32 --heads projection train.precision=fp32 --baseline "$@"
bench tf32 --heads projection train.precision=tf32 "$@"
ROW_TIMEOUT=${PACK_TIMEOUT:-240} bench packing_cuda_graph_8 --heads projection train.precision=bf16 train.cuda_graph=true --jobs 8 --pack-seconds 5 "$@"
# the paper's ImageNet intra-FID (eval=paper_imagenet: 5000 generated per class) on 10 of 1000 classes: its
# per_class_pass_s_all_classes_one_device is the per-class pass of a final evaluation on one GPU
bench sngan128_eval_per_class --heads "" model=sngan_128 dataset.resolution=128 train=paper_imagenet eval=paper_imagenet eval.intra_fid_classes=10 --n-classes 1000 --eval "$@"
bench bf16_heads --heads concat,acgan train.precision=bf16 "$@"
bench fp32_contiguous --heads projection train.precision=fp32 train.channels_last=false "$@"
# compiled rows last: each compiles for a minute or more first (first_it_s); compile_counts says what was compiled
ROW_TIMEOUT=${COMPILE_TIMEOUT:-150} bench bf16_compile_cuda_graph_joint --profile --heads projection train.precision=bf16 train.compile=true train.cuda_graph=true train.joint_d_forward=true "$@"
ROW_TIMEOUT=${COMPILE_TIMEOUT:-150} bench bf16_compile --heads projection train.precision=bf16 train.compile=true "$@"
ROW_TIMEOUT=${COMPILE_TIMEOUT:-150} bench bf16_cudagraphs --heads projection train.precision=bf16 train.compile=true train.compile_mode=reduce-overhead "$@"
ROW_TIMEOUT=${COMPILE_TIMEOUT:-150} bench fp32_compile --heads projection train.precision=fp32 train.compile=true "$@"
# several jobs of a sweep sharing this one GPU, eager (bf16: what train.precision=auto picks on an H100)
ROW_TIMEOUT=${PACK_TIMEOUT:-240} bench packing --heads projection train.precision=bf16 --jobs 1,2,4,8 --pack-seconds 5 "$@"
pack
exit $failed
