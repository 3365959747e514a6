#!/usr/bin/env bash
# The speed benchmark on one GPU machine, in one run of at most 8 minutes, with no network:
#   bash launch/benchmark_gpu.sh [OUT_DIR]          (default benchmark_gpu/)
#   bash launch/benchmark_gpu.sh --download         (where pip reaches PyPI: fills .whl/, see below)
# Stages, in this order, each time-boxed with `timeout` within one budget (BUDGET_S, default 470 s from the start;
# a stage gets its cap or what is left, whichever is less; one that overruns gets "stage X: timed out after N s"
# in its table, and the script goes on). Each table is written as its stage runs:
#   c  parity.md   first: cuDNN's fused attention against XLA's (attention_parity); if it fails, the trainer
#                  stages run with --attention xla
#   a  train.md    the trainer end to end on VOC at the paper's settings (benchmark_train: batch 16, 512²,
#                  bfloat16, 80 steps, half in each phase; it stops itself cleanly before its box closes)
#   b  clip.md     our CLIP towers against transformers' PyTorch (sdpa) eager and torch.compile on the same GPU,
#                  bfloat16, 224² × 64 and 512² × 16 and the text tower, our attention xla and cudnn
#   d  train.md    the trainer end to end on COCO-Stuff, both phases (40 steps)
#   e  account.md  the train step's device time per part, VOC then COCO-Stuff, from one profile of the compiled
#                  step (benchmark --profile)
#   f  mpot.md     MPOT's solvers at COCO-Stuff's training shape (benchmark_mpot --classes 171)
# and summary.txt (the machine, each stage's wall time and exit status), log.txt (the stages' stderr) and all.md
# (everything above in one file): 8 files, what the device tool brings back. Compilations, and XLA's autotuning of
# each fusion, are cached on disk for the whole run (JAX_COMPILATION_CACHE_DIR, outside OUT_DIR so that only the
# tables come back): the ViT's fusions are tuned once, for every stage.
# Needs JAX for CUDA, flax, optax, orbax, transformers and torch (the GPU image has them). The other Python
# packages travel as wheels: run `bash launch/benchmark_gpu.sh --download` where pip reaches PyPI, which fills
# .whl/ (git-ignored, ~12 MB), and carry .whl/ with the repository; this script installs from it offline (the
# carried protobuf only where the image's is too old for the carried packages' generated code).
# Env: PYTHON (default python3), QUICK=1 (toy sizes: checks the script on a CPU, measures nothing; budget 3600 s,
# caps ×3), BUDGET_S (raise it where more device time is left: the later stages get it), CACHE_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
# What zegot_jax needs beyond the GPU image (its pyproject's dependencies and theirs, less the packages in the
# device image's list in the device tool's KINDS.md, 2026-11-17).
extra=("ott-jax>=0.5,<0.7" jaxopt "ml-collections>=1.0,<2" "tensorflow-datasets>=4.9.7,<5" "array-record>=0.7"
       "grain>=0.2.10,<0.3" portpicker "tensorboardx>=2.6"
       importlib_resources dm-tree immutabledict promise simple-parsing docstring-parser tensorflow-metadata
       googleapis-common-protos termcolor toml
       "protobuf>=6.33.5,<8")  # installed only where the image's protobuf is older than the carried _pb2 files need

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

budget=${BUDGET_S:-470} scale=1
[ "${QUICK:-0}" = 1 ] && budget=${BUDGET_S:-3600} scale=3  # a loaded CPU compiles slowly
deadline=$((SECONDS + budget))
out=${1:-benchmark_gpu}
mkdir -p "$out"
summary=$out/summary.txt log=$out/log.txt
tables=(train clip parity account mpot)
for name in "${tables[@]}"; do : >"$out/$name.md"; done
: >"$summary"
: >"$log"
install() {  # offline, beside the image's packages, into a fresh directory (one pip call merges google/)
  rm -rf /tmp/zegot_site
  "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/zegot_site "$@" >>"$log" 2>&1
}
needed="import tensorflow_datasets, tensorflow_metadata.proto.v0.schema_pb2, grain, ott, ml_collections, tensorboardX"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! "$python" -c "$needed" 2>/dev/null; then  # the image lacks them: the carried wheels
  if ! compgen -G ".whl/*.whl" >/dev/null; then
    echo "error: $python lacks zegot_jax's packages and .whl/ holds no wheels: run bash launch/benchmark_gpu.sh" \
         "--download where pip reaches PyPI, and carry .whl/" | tee -a "$summary" >&2
    exit 2
  fi
  export PYTHONPATH="/tmp/zegot_site:$PYTHONPATH"
  install $(ls .whl/*.whl | grep -v /protobuf-)
  if ! "$python" -c "$needed" 2>>"$log"; then
    echo "the carried packages do not import with the image's protobuf: the carried protobuf too" | tee -a "$log"
    install .whl/*.whl
  fi
fi
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
export JAX_COMPILATION_CACHE_DIR=${CACHE_DIR:-${TMPDIR:-/tmp}/zegot_benchmark_gpu_jax_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0
{
  echo "benchmark_gpu.sh $(date -u +%Y-%m-%dT%H:%MZ), budget $budget s${QUICK:+, QUICK=$QUICK}"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  "$python" -c "import jax, torch; print('jax', jax.__version__, jax.devices(), '| torch', torch.__version__,
                 'cuda' if torch.cuda.is_available() else 'no cuda')" 2>>"$log" || echo "jax or torch: no import"
  echo "commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown), with the working tree's changes"
} | tee -a "$summary"

combine() {  # all.md: every table so far, then the summary
  { for name in "${tables[@]}"; do [ -s "$out/$name.md" ] && { cat "$out/$name.md"; echo; }; done
    echo '```'; cat "$summary"; echo '```'; } >"$out/all.md"
}

# stage ID TABLE CAP TITLE COMMAND...: COMMAND's stdout appended to OUT/TABLE.md (and shown), its stderr to the
# log, at most CAP seconds and never past the budget. @SOFT@ in COMMAND becomes the time a tool may use before it
# must stop by itself (the box less 30 s for its last words).
stage() {
  local id=$1 file=$out/$2.md cap=$(($3 * scale)) title=$4
  shift 4
  local left=$((deadline - SECONDS)) start=$SECONDS
  local limit=$((cap < left ? cap : left))
  printf '## %s. %s\n\n' "$id" "$title" >>"$file"
  if ((limit < 20)); then
    last_rc=124
    echo "stage $id: skipped, $left s left of the $budget s budget" | tee -a "$file" "$summary"
    combine
    return
  fi
  local command=("${@//@SOFT@/$((limit > 60 ? limit - 30 : limit / 2))}")
  echo "== stage $id, at most $limit s: ${command[*]}" | tee -a "$log"
  set +e
  timeout -k 10 "$limit" "${command[@]}" 2>>"$log" | tee -a "$file"
  local status=("${PIPESTATUS[@]}")
  set -e
  local rc=${status[0]} note=""
  last_rc=$rc
  if ((rc == 124 || rc == 137)); then
    note="stage $id: timed out after $limit s"
  elif ((rc != 0)); then
    note="stage $id: failed with exit status $rc (its errors are in log.txt)"
  fi
  [ -n "$note" ] && echo "$note" | tee -a "$file"
  echo >>"$file"
  printf 'stage %s  %-60s %4d s  %s\n' "$id" "$title" $((SECONDS - start)) "${note:-done}" >>"$summary"
  combine
}

if [ "${QUICK:-0}" = 1 ]; then  # the same commands at toy sizes: checks the script, measures nothing
  toy=(--images 8 --image_size 64 --batch 2 --steps 6 --clip random-tiny --dtype float32 --workers 0)
  train_voc=(--dataset voc12_zs3 "${toy[@]}")
  train_coco=(--dataset coco_stuff171_zs3 "${toy[@]}")
  clip=(--dtypes float32 --images 32x1 --prompts 2 --repeats 1 --matmuls 64x64x64)
  account=(--config.clip.image_size=64 --batch 1 --memory_batches 1 --repeats 1 --dtype float32)
  mpot=(--batch 1 --layers 1 --grid 4)
else
  train_voc=(--dataset voc12_zs3 --steps 80 --images 64)
  train_coco=(--dataset coco_stuff171_zs3 --steps 40 --images 64)
  clip=(--dtypes bfloat16 --images 224x64,512x16 --attention xla,cudnn --repeats 10
        --matmuls 12608x768x3072,16400x768x3072,16400x3072x768)
  account=()
  mpot=()
fi
tool=("$python" -m)
# cuDNN's attention against XLA's first: if it fails or disagrees, the trainer runs on XLA's (its parity is the
# condition for clip.attention=auto taking cuDNN), and the tables say so.
stage c parity 90 "cuDNN's attention against XLA's" \
  "${tool[@]}" zegot_jax.tools.attention_parity
if ((last_rc != 0)); then
  echo "attention_parity failed: the trainer runs with --attention xla" | tee -a "$summary" "$out/train.md"
  train_voc+=(--attention xla)
  train_coco+=(--attention xla)
fi
stage a train 180 "VOC 2012, the trainer end to end" \
  "${tool[@]}" zegot_jax.tools.benchmark_train "${train_voc[@]}" --time_limit=@SOFT@
# PyTorch shares the GPU with JAX in one process: JAX takes less than its usual 75%.
stage b clip 110 "CLIP towers against PyTorch" \
  env XLA_PYTHON_CLIENT_MEM_FRACTION=0.45 "${tool[@]}" zegot_jax.tools.benchmark_clip "${clip[@]}"
stage d train 120 "COCO-Stuff, the trainer end to end" \
  "${tool[@]}" zegot_jax.tools.benchmark_train "${train_coco[@]}" --time_limit=@SOFT@
stage e1 account 90 "VOC 2012, the train step's parts" \
  "${tool[@]}" zegot_jax.tools.benchmark --config configs/voc12_zs3.py --profile "${account[@]}"
stage e2 account 90 "COCO-Stuff, the train step's parts" \
  "${tool[@]}" zegot_jax.tools.benchmark --config configs/coco_stuff171_zs3.py --profile "${account[@]}"
stage f mpot 40 "MPOT at COCO-Stuff's training shape" \
  "${tool[@]}" zegot_jax.tools.benchmark_mpot --classes 171 "${mpot[@]}"
echo "total $SECONDS s of the $budget s budget" | tee -a "$summary"
combine
echo "tables in $out/: ${tables[*]/%/.md} summary.txt log.txt all.md"
