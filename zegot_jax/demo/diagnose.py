r"""Where a demo run wins or loses its unseen classes: each output of eq. 11 alone, and the teacher's pseudo-labels.

  python -m zegot_jax.demo.diagnose --config configs/demo.py --workdir runs/demo [--step N] [--split validation]

For one checkpoint of a run on the textures world (its images are one evaluation window each), on a split:
* mIoU(S), mIoU(U), hIoU of the score branch Y (eq. 9) alone, of the decoder's Ỹ (eq. 10) alone and of the
  ensemble Y* = λY + (1 − λ)Ỹ (eq. 11, what evaluation reports), with the config's seen-class calibration;
* on the pixels of unseen classes, the pseudo-labels this checkpoint gives as a teacher (Algorithm 2, line 11:
  argmax of Y* over the unseen classes): a confusion matrix, its class-averaged accuracy and each class's share;
* the share of those pixels whose argmax of Y* over all classes is an unseen class (seen against unseen);
* for every class and prompt, how well that prompt's fused map S* (eq. 8, upsampled as Y is) ranks the class's
  pixels above all other labelled pixels: the AUROC over the split (0.5: chance; 1: every pixel of the class scores
  above every other pixel). "The prompts' maps find the class" as a number.
docs/demo.md's measurements of the demo's settings were made with it.
"""

from __future__ import annotations

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import flags
from ml_collections import config_flags

from zegot_jax import checkpoints, cli, config_lib, evaluation, from_config, metrics
from zegot_jax.demo import results
from zegot_jax.models import zegot

BRANCHES = (("Y", "score_logits"), ("Ỹ", "decoder_logits"), ("Y*", "logits"))


def diagnose(config, workdir, step: int | None = None, split: str | None = None, batch: int = 50) -> dict:
  """The measurements above as a dict: branches {name: {mIoU_seen, mIoU_unseen, hIoU}}, teacher {confusion
  (U, U) rows truth, accuracy, share}, to_unseen (U,), prompt_auroc {classes, seen, unseen, auroc (K, N),
  mean_seen, mean_unseen}, step, split."""
  run = checkpoints.load_run(workdir, config, step)
  if split is not None:  # on a copy: the caller's config is left as it is
    config = config_lib.apply_overrides(ml_collections.ConfigDict(config.to_dict()), {"eval.split": split})
  dataset = from_config.open_dataset(config)
  spec = dataset.spec
  source = evaluation.evaluation_split(config, dataset)  # ConfigError naming the splits when it has no such split
  split = evaluation.evaluation_split_name(config)
  seen, unseen = list(spec.seen), list(spec.unseen)
  k, u = len(spec.classes), len(unseen)
  seen_mask = jnp.zeros(k, bool).at[jnp.asarray(seen)].set(True)
  text = run.model.apply({"params": run.params}, zegot.class_tokens(run.tokenizer, list(spec.classes),
                                                                     run.model.config, run.model.clip_config),
                          method="encode_classes")

  @jax.jit
  def measure(images, labels):
    out, aux = run.model.apply({"params": run.params}, images, text, method="segment")
    fused = aux["fused_map"]  # (B, h, w, K, N) S* per prompt
    b, _, _, _, n = fused.shape
    maps = zegot.upsample(fused.reshape(*fused.shape[:3], k * n), labels.shape[1:3])  # (B, H, W, K·N)
    counts = {name: metrics.iou_counts(metrics.predict_labels(getattr(out, field), seen_mask,
                                                                config.eval.seen_bias), labels, k)
              for name, field in BRANCHES}
    teacher = jnp.argmax(out.logits[..., jnp.asarray(unseen)], axis=-1)  # (B, H, W) index into `unseen`
    truth = jnp.argmax(labels[..., None] == jnp.asarray(unseen), axis=-1)
    on_unseen = jnp.isin(labels, jnp.asarray(unseen))
    confusion = jnp.zeros((u, u), jnp.int32).at[truth, teacher].add(on_unseen.astype(jnp.int32))
    to_unseen = jnp.zeros(u, jnp.int32).at[truth].add(
        (on_unseen & jnp.isin(jnp.argmax(out.logits, axis=-1), jnp.asarray(unseen))).astype(jnp.int32))
    return counts, confusion, to_unseen, maps.reshape(b, *labels.shape[1:3], k, n)

  sums = {name: metrics.IoUAccumulator(k) for name, _ in BRANCHES}
  confusion, to_unseen = np.zeros((u, u), np.int64), np.zeros(u, np.int64)
  all_maps, all_labels = [], []
  for start in range(0, len(source), batch):
    examples = [source[i] for i in range(start, min(start + batch, len(source)))]
    images = np.stack([np.asarray(e["image"]) for e in examples])
    labels = np.stack([np.asarray(e["label"])[..., 0] for e in examples]).astype(np.int32)
    counts, c, t, maps = measure(images, labels)
    all_maps.append(np.asarray(maps, np.float32))
    all_labels.append(labels)
    for name, (inter, union) in counts.items():
      sums[name].add(inter, union)
    confusion += np.asarray(c)
    to_unseen += np.asarray(t)
  branches = {}
  for name, acc in sums.items():
    report = metrics.miou_report(acc.intersection, acc.union, spec.classes, seen, unseen)
    branches[name] = {m: report[m] for m in results.METRICS}
  pixels = confusion.sum(1)
  maps, labels = np.concatenate(all_maps), np.concatenate(all_labels)
  labelled = labels < k
  truth = labels[labelled]  # (P,) over the labelled pixels of the split
  auroc = metrics.auroc(maps[labelled], (truth[:, None] == np.arange(k))[..., None], axis=0).tolist()  # (K, N)
  prompt_auroc = dict(classes=list(spec.classes), seen=seen, unseen=unseen, auroc=auroc,
                      mean_seen=float(np.mean([auroc[c] for c in seen])),
                      mean_unseen=float(np.mean([auroc[c] for c in unseen])))
  return dict(step=run.step, split=split, unseen=[spec.classes[c] for c in unseen], branches=branches,
              prompt_auroc=prompt_auroc,
              teacher=dict(confusion=confusion.tolist(), accuracy=float(np.mean(np.diag(confusion) / pixels)),
                           share=(confusion.sum(0) / confusion.sum()).tolist()),
              to_unseen=(to_unseen / pixels).tolist())


def format_diagnosis(d: dict) -> str:
  lines = [f"step {d['step']}, {d['split']} split", "", "| output | mIoU(S) | mIoU(U) | hIoU |", "|---|---|---|---|"]
  lines += [f"| {n} | {r['mIoU_seen']:.1f} | {r['mIoU_unseen']:.1f} | {r['hIoU']:.1f} |" for n, r in
            d["branches"].items()]
  t = d["teacher"]
  lines += ["", "teacher's pseudo-labels on unseen pixels (rows: truth; columns: pseudo-label; right: recall)",
            "| | " + " | ".join(d["unseen"]) + " | right |", "|---" * (len(d["unseen"]) + 2) + "|"]
  for i, (name, row) in enumerate(zip(d["unseen"], t["confusion"])):
    lines.append(f"| {name} | " + " | ".join(str(x) for x in row) + f" | {100 * row[i] / max(sum(row), 1):.0f}% |")
  lines.append(f"class-averaged accuracy {100 * t['accuracy']:.1f}% (chance {100 / len(d['unseen']):.0f}%); share "
               "of the pseudo-labels: " + ", ".join(f"{n} {100 * s:.0f}%" for n, s in zip(d["unseen"], t["share"])))
  lines.append("unseen pixels whose argmax over all classes is an unseen class: "
               + ", ".join(f"{n} {100 * s:.0f}%" for n, s in zip(d["unseen"], d["to_unseen"])))
  a = d["prompt_auroc"]
  lines += ["", "AUROC of each prompt's fused map S* for its class (pixels of the class against all other labelled "
            "pixels; 0.5 is chance)", "| class | | " + " | ".join(f"prompt {i + 1}" for i in range(len(a["auroc"][0])))
            + " |", "|---|---" + "|---" * len(a["auroc"][0]) + "|"]
  for c, (name, row) in enumerate(zip(a["classes"], a["auroc"])):
    lines.append(f"| {name} | {'unseen' if c in a['unseen'] else 'seen'} | " + " | ".join(f"{x:.3f}" for x in row)
                 + " |")
  lines.append(f"mean AUROC: seen classes {a['mean_seen']:.3f}, unseen classes {a['mean_unseen']:.3f}")
  return "\n".join(lines)


def main(argv, f: dict):
  del argv
  d = diagnose(f["config"].value, f["workdir"].value, f["step"].value, f["split"].value)
  print(format_diagnosis(d))
  if f["json"].value:
    path = pathlib.Path(f["json"].value)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(d, indent=1))
    print(f"written to {path}")


if __name__ == "__main__":
  _flags = dict(config=config_flags.DEFINE_config_file("config", "configs/demo.py", "the run's config file",
                                                       lock_config=True),
                workdir=flags.DEFINE_string("workdir", None, "the run's workdir", required=True),
                step=flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)"),
                split=flags.DEFINE_string("split", None, "split (default: the config's evaluation split)"),
                json=flags.DEFINE_string("json", None, "also write the measurements to this JSON file"))
  cli.run(functools.partial(main, f=_flags))
