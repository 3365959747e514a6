#!/usr/bin/env bash
# Diagnostic for a task lent a GPU (the device tool's `run`, repository root, one call of under 10 minutes; not
# run yet). Does the mini-CLIP's ViT learn the demo's scenes when shown about a hundred times the images a CPU
# session can? On this project's 2-core CPU it classifies 19% of the scenes' object patches after 38,400 images
# with every patch's label, where a small CNN gets 70% (README, "The offline demo").
#   1. the supervised ceiling at scale: 400,000 scenes, 4,000,000 images (the accuracy every 256,000 images);
#   2. caption pretraining at scale: a 400,000-image pool, 12,000 steps of 512; the checkpoint comes back in
#      $OUT/mini_clip (about 6 MB) for `dense_zero_shot_accuracy` on the CPU here.
# The machine's python3 has jax (CUDA), flax, optax, transformers, absl and tqdm; nothing to install.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -c "import jax; print(jax.devices())"
timeout 240 python3 docs/diagnostics/supervised_ceiling.py --batch_size 512 --lr 2e-3 --scenes 400000 \
    --images 4000000 --workers 16 --eval_every 256000 2>&1 | grep -v Warn | tee "$OUT/ceiling.log"
timeout 300 python3 -m zegot_jax.tools.pretrain_mini_clip --out "$OUT/mini_clip" --pool_size 400000 \
    --steps 12000 --batch_size 512 --workers 16 2>&1 | grep -v Warn | tail -5 | tee "$OUT/pretrain.log"
