#!/usr/bin/env bash
# The whole speed benchmark on one GPU machine, in one run of under 10 minutes, with no network:
#   bash launch/benchmark_gpu.sh [OUT_DIR]          (default benchmark_gpu/; one markdown file per table)
# 1. the cost account of the train step (both phases) at the paper's settings for VOC, Context and COCO-Stuff
#    (batch 16, 512², ViT-B/16, bfloat16) and of COCO-Stuff's eval forward (zegot_jax.tools.benchmark);
# 2. MPOT's forward + backward at COCO-Stuff's training shape, each solver (zegot_jax.tools.benchmark_mpot);
# 3. our CLIP towers against transformers' PyTorch CLIPModel (sdpa), float32 and bfloat16 (benchmark_clip).
# Needs JAX for CUDA, flax, optax, orbax, transformers and torch (a GPU image usually has them). Python packages
# the machine lacks travel as wheels: run `bash launch/benchmark_gpu.sh --download` where pip reaches PyPI, which
# fills .whl/ (git-ignored, ~20 MB), and carry .whl/ with the repository; this script installs from it offline.
# Env: PYTHON (default python3), QUICK=1 (tiny shapes, for checking the script itself on a CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# What zegot_jax needs beyond a JAX/PyTorch GPU image (its pyproject's dependencies, less what such images hold).
# (Our venv's packages missing from the device image's list in the device tool's KINDS.md, 2026-11-17.)
extra=("ott-jax>=0.5,<0.7" jaxopt "ml-collections>=1.0,<2" "tensorflow-datasets>=4.9.7,<5" "array-record>=0.7"
       "grain>=0.2.10,<0.3" portpicker "tensorboardx>=2.6"
       importlib_resources dm-tree immutabledict promise simple-parsing docstring-parser tensorflow-metadata
       googleapis-common-protos termcolor toml)

if [ "${1:-}" = --download ]; then
  mkdir -p .whl
  for package in "${extra[@]}"; do  # binary wheels for the device's CPython; a pure-Python sdist is built here
    "$python" -m pip download -q --no-deps --only-binary=:all: --python-version "${WHEEL_PYTHON:-3.12}" \
      --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl "$package" \
      2>/dev/null || "$python" -m pip wheel -q --no-deps -w .whl "$package"
  done
  ls .whl
  exit 0
fi

out=${1:-benchmark_gpu}
mkdir -p "$out"
if compgen -G ".whl/*.whl" >/dev/null; then  # offline install of the carried wheels, beside the image's packages
  "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/zegot_site .whl/*.whl
  export PYTHONPATH="/tmp/zegot_site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
"$python" -c "import jax; print('devices:', jax.devices())"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"

if [ "${QUICK:-0}" = 1 ]; then  # the same commands at toy sizes: checks the script, measures nothing
  train=(--config.clip.image_size=64 --batch 1 --memory_batches 1 --repeats 1 --dtype float32)
  mpot=(--batch 1 --layers 1 --grid 4)
  clip=(--images 32x1 --prompts 2 --repeats 1 --dtypes float32 --matmuls 64x64x64)
  datasets=(voc12_zs3)
else
  train=()
  mpot=()
  clip=(--images 224x4,512x1,512x16 --repeats 10)
  datasets=(voc12_zs3 pascal_context59_zs3 coco_stuff171_zs3)
fi
for dataset in "${datasets[@]}"; do
  echo "== train step: $dataset"
  "$python" -m zegot_jax.tools.benchmark --config "configs/$dataset.py" "${train[@]}" | tee "$out/train_$dataset.md"
done
echo "== eval forward: coco_stuff171_zs3"
"$python" -m zegot_jax.tools.benchmark --config configs/coco_stuff171_zs3.py --mode eval "${train[@]}" \
  | tee "$out/eval_coco_stuff171_zs3.md"
echo "== MPOT at COCO-Stuff's training shape"
"$python" -m zegot_jax.tools.benchmark_mpot --classes 171 "${mpot[@]}" | tee "$out/mpot.md"
echo "== CLIP against PyTorch"
"$python" -m zegot_jax.tools.benchmark_clip "${clip[@]}" | tee "$out/clip.md"
echo "tables in $out/"
