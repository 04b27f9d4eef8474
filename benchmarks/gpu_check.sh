#!/usr/bin/env bash
# Every GPU test and every GPU benchmark of mmx in one command, on a fresh GPU machine.
#
# Expects: Python 3.12 with torch (CUDA), transformers, numpy, scipy, pandas, pyarrow, h5py,
# pillow and pytest installed, no package index, and the wheels of benchmarks/gpu_wheels.sh
# in .whl/ (downloaded beforehand where pip works). Installs them into a private folder,
# then runs, each under its own time limit so the whole stays within 8 minutes:
#   1. the gpu-marked tests first (each CUDA path against the CPU), then the train, eval and
#      cache suites with CUDA visible (where `--device auto` picks CUDA; the whole default suite
#      takes ~2.5 min, more than this budget, and its extract/pipeline parts run in CI);
#   2. bench_train.py (paper-000 round-robin, tri, quad to early stop, XMediaNet scale),
#      bench_train_host.py (ms/step of tiny heads: the host's floor per step),
#      bench_train_cvs.py (CVS/M-CVS/RVS ms/iter), bench_eao.py (paper size, bf16),
#      bench_eval.py (every metric, both relevances), bench_extract.py (image pipeline/model
#      for EfficientNet-Lite0 and a ResNet-50 at batch 64, audio and video figures), and
#      bench_eao_reference.py on CUDA (mmx's EAO against ninatu/everything_at_once on the same
#      data, dimensions and device) when a checkout of that repository is in .eao_ref/ (or
#      $EAO_REFERENCE; git-ignored, 1.4 MB, never part of mmx: `git clone
#      https://github.com/ninatu/everything_at_once .eao_ref` where GitHub is reachable);
# and writes env.txt, one log per step and figures.txt (the lines that carry the figures)
# into $OUT (or ./gpu-out when OUT is unset): at most 11 files. Limits per step add up to
# 460 s, plus about 20 s of installing; GPU_CHECK_STEPS="train extract" reruns some steps.
#
#     bash benchmarks/gpu_wheels.sh     # here, once
#     bash benchmarks/gpu_check.sh      # there
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
OUT_DIR=${OUT:-$REPO/gpu-out}
mkdir -p "$OUT_DIR"
PY=${PYTHON:-python3}
T0=$(date +%s)

# -- dependencies from the carried wheels; the checkout imported as `mmx` --------------------
SITE=/tmp/mmx-gpu-site
if ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl \
    || { echo "installing .whl/ failed" | tee "$OUT_DIR/env.txt"; exit 1; }
fi
mkdir -p /tmp/mmx-gpu-path && ln -sfn "$REPO" /tmp/mmx-gpu-path/mmx
export PYTHONPATH=/tmp/mmx-gpu-path:$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1
  echo "cpus: $(nproc)"
  "$PY" -c "import sys, torch, mmx; print('python', sys.version.split()[0], '| torch', torch.__version__, '| cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '-', '| mmx', mmx.__file__)"
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"

STEPS=${GPU_CHECK_STEPS:-gputests tests train host cvs eao eaoref eval extract}  # a rerun can name fewer
step() {  # step NAME SECONDS COMMAND...: run with a time limit, log to $OUT/NAME.log, never abort the rest
  local name=$1 limit=$2; shift 2
  [[ " $STEPS " == *" $name "* ]] || return 0
  local t=$(date +%s)
  echo "== $name (limit ${limit}s)"
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT_DIR/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc after $(( $(date +%s) - t ))s" | tee -a "$OUT_DIR/$name.log"
  tail -n 3 "$OUT_DIR/$name.log"
}

# 1. tests (cuBLAS with the fixed workspace that deterministic runs need, mmx.train.loop.deterministic_kernels):
#    the gpu-marked ones (52 s for their CPU twins on the 2-core machine), then the
#    train/eval/cache suites with CUDA visible (58 s there on the CPU)
step gputests 80 env CUBLAS_WORKSPACE_CONFIG=:4096:8 "$PY" -m pytest -q -p no:cacheprovider -m gpu -o addopts="-ra --strict-markers" tests
step tests 85 env CUBLAS_WORKSPACE_CONFIG=:4096:8 "$PY" -m pytest -q -p no:cacheprovider -m "not slow and not network_heavy and not gpu" -o addopts="-ra --strict-markers" tests/train tests/eval tests/cache
# 2. benchmarks (threads: mmx's default; figures go to figures.txt)
step train 80 "$PY" benchmarks/bench_train.py --only roundrobin,tri,quad,quad-graphs --device cuda
step host 30 "$PY" benchmarks/bench_train_host.py --device cuda --width tiny --repeats 3
step cvs 25 "$PY" benchmarks/bench_train_cvs.py --device cuda --steps 20 --cuda-graphs
step eao 30 "$PY" benchmarks/bench_eao.py --device cuda --steps 5
EAO_REF=${EAO_REFERENCE:-$REPO/.eao_ref}
if [[ -d $EAO_REF/everything_at_once ]]; then
  step eaoref 20 "$PY" benchmarks/bench_eao_reference.py --reference "$EAO_REF" --device cuda --steps 10 --dims 256,1024
else
  step eaoref 5 echo "no checkout of ninatu/everything_at_once at $EAO_REF: EAO against its reference not measured"
fi
step eval 30 "$PY" benchmarks/bench_eval.py --device cuda
step extract 80 "$PY" benchmarks/bench_extract.py --device cuda --images 1024 --batch-size 64 --workers 0 --resnet50

# -- the figures, one file ----------------------------------------------------------------------
{
  echo "machine: $(head -2 "$OUT_DIR/env.txt" | tail -1), $(nproc) CPU cores; total $(( $(date +%s) - T0 )) s"
  for t in gputests tests; do
    echo "$t: $(grep -h -E "passed|failed|error|skipped" "$OUT_DIR/$t.log" | tail -1)"
    grep -h -E "^FAILED|^ERROR" "$OUT_DIR/$t.log"
  done
  grep -h -E "^(roundrobin|tri|quad|quad-graphs) " "$OUT_DIR/train.log"
  grep -h -E "^(quad|roundrobin|heldout|recall|cvs) +tiny" "$OUT_DIR/host.log"
  grep -h -E "^(cvs|mcvs|rvs|cvs-graphs) |growth|M-CVS last|CUDA graphs /" "$OUT_DIR/cvs.log"
  grep -h -E "samples/s|TFLOP|peak" "$OUT_DIR/eao.log"
  grep -h -E "samples/s reference|no checkout" "$OUT_DIR/eaoref.log"
  grep -h -E "wall|similarities" "$OUT_DIR/eval.log"
  grep -h -E "^(efficientnet|frames|logmel|minilm|resnet)|device=" "$OUT_DIR/extract.log"
} > "$OUT_DIR/figures.txt" 2>/dev/null
cat "$OUT_DIR/figures.txt"
