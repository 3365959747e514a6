r"""The demo's results table: mIoU(S), mIoU(U), hIoU, mean ± std over seeds, for

  (a) the frozen CLIP alone: hand-crafted prompts, no training (the dense zero-shot baseline),
  (b) ZegOT without MPOT (model.matching=none),
  (c) ZegOT with bipartite matching instead of MPOT (Table 4b),
  (d) ZegOT with hand-crafted prompts,
  (e) ZegOT,

(b)-(e) trained in the inductive and the transductive setting, and
  (f) ZegOT with every class labelled (setting=supervised): the ceiling, not zero-shot.

  python -m zegot_jax.demo.results --out runs/demo_results [--seeds 0,1,2] [--config configs/demo.py]

Every run is a normal training run in <out>/<row>_<setting>_seed<s>/ (inspectable, resumable); a run whose
result.json exists is not redone, so an interrupted table continues where it stopped. Every run is evaluated on
the config's evaluation split (the demo's: test). Writes <out>/results.json
and <out>/results.md. The seed sets the initialization, the batch order and the augmentation; the dataset and the
CLIP stay fixed, so (a), which has nothing random, has a standard deviation of 0.
"""

from __future__ import annotations

import functools
import json
import pathlib

import ml_collections
import numpy as np
from absl import flags, logging

from zegot_jax import checkpoints, cli, config_lib, evaluation, trainer

METRICS = ("mIoU_seen", "mIoU_unseen", "hIoU")
SETTINGS = ("inductive", "transductive")
UNTRAINED = "no training"
ROWS = {  # row → (title, config overrides (None: the untrained baseline), settings)
    "baseline": ("(a) frozen CLIP, hand-crafted prompts, no training", None, (UNTRAINED,)),
    "no_mpot": ("(b) ZegOT without MPOT", {"model.matching": "none"}, SETTINGS),
    "bipartite": ("(c) ZegOT, bipartite matching instead of MPOT", {"model.matching": "bipartite"}, SETTINGS),
    "handcrafted": ("(d) ZegOT with hand-crafted prompts", {"model.prompts": "handcrafted"}, SETTINGS),
    "zegot": ("(e) ZegOT", {}, SETTINGS),
    "supervised": ("(f) ZegOT, every class labelled (the ceiling)", {}, ("supervised",)),
}


def baseline_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The frozen CLIP alone: per pixel, the cosine between its last-layer dense feature and the mean of the
  hand-crafted prompts' text embeddings (sum over prompts; same argmax), upsampled. As a ZegOT config: no GA,
  no matching, one DFA layer (the last), λ = 1 so the (untrained) decoder has weight 0."""
  c = ml_collections.ConfigDict(config.to_dict())
  c.model.update(dict(prompts="handcrafted", matching="none", global_alignment=False, ensemble_lambda=1.0,
                      dfa_layers=(config.model.dfa_layers[-1],)))
  c.eval.seen_bias = 0.0
  return c


def write_result(path: pathlib.Path, result: dict) -> None:
  """Writes the part of an evaluation result that the tables read (result.json of a run)."""
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(json.dumps({k: result[k] for k in ("dataset", "split", "examples", *METRICS, "report")}, indent=1))


def evaluate_untrained(config: ml_collections.ConfigDict, workdir: pathlib.Path, seed: int = 0) -> dict:
  """Evaluates a config with freshly initialized trainable params (for the baseline, they have no effect)."""
  run = checkpoints.load_run(workdir, config, untrained_seed=seed)
  return evaluation.evaluate_dataset(config, run.model, run.params, run.tokenizer, mesh=run.mesh)


def run_config(config_path: str, overrides: dict | None, setting: str, seed: int, steps: int | None):
  config = config_lib.apply_overrides(config_lib.load_config(f"{config_path}:setting={setting}"), overrides or {})
  config.train.seed = seed
  config.eval.pictures = 0
  if steps:
    config.train.steps = steps
    config.train.eval_every = steps
  return config


def _summary(runs: list[dict]) -> dict:
  return {m: dict(mean=float(np.mean([r[m] for r in runs])), std=float(np.std([r[m] for r in runs])),
                  values=[r[m] for r in runs]) for m in METRICS}


def results_table(results: dict) -> str:
  """Markdown: one line per row and setting, mean ± std (population std over the seeds)."""
  lines = ["| method | setting | mIoU(S) | mIoU(U) | hIoU |", "|---|---|---|---|---|"]
  for row, (title, _, _) in ROWS.items():
    for setting, summary in results[row].items():
      cells = [f"{summary[m]['mean']:.1f} ± {summary[m]['std']:.1f}" for m in METRICS]
      lines.append(f"| {title} | {setting} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def run_all(out: str | pathlib.Path, *, config_path: str = "configs/demo.py", seeds=(0, 1, 2),
            steps: int | None = None) -> dict:
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  results = {}
  for row, (_, overrides, settings) in ROWS.items():
    results[row] = {}
    for setting in settings:
      runs = []
      for seed in seeds if overrides is not None else seeds[:1]:
        workdir = out / f"{row}_{setting.replace(' ', '_')}_seed{seed}"
        done = workdir / "result.json"
        if not done.is_file():
          config = run_config(config_path, overrides, "transductive" if overrides is None else setting, seed,
                              steps)
          if overrides is None:
            result = evaluate_untrained(baseline_config(config), workdir, seed)
          else:
            result = trainer.train_and_evaluate(config, workdir)["eval"]
          write_result(done, result)
        runs.append(json.loads(done.read_text()))
        print(f"{row:12s} {setting:13s} seed {seed}: " + "  ".join(f"{m} {runs[-1][m]:.2f}" for m in METRICS),
              flush=True)
      results[row][setting] = _summary(runs)
  (out / "results.json").write_text(json.dumps(dict(seeds=list(seeds), config=config_path, steps=steps,
                                                    results=results), indent=1))
  table = results_table(results)
  (out / "results.md").write_text(table + "\n")
  return dict(results=results, table=table)


def main(argv, f: dict):
  del argv
  logging.set_verbosity(logging.WARNING)
  summary = run_all(f["out"].value, config_path=f["config"].value, seeds=tuple(int(s) for s in f["seeds"].value),
                    steps=f["steps"].value)
  print(summary["table"])
  print(f"written to {f['out'].value}/results.md and results.json")


if __name__ == "__main__":  # flags defined only when run as a program: importing this module defines none
  _flags = dict(out=flags.DEFINE_string("out", "runs/demo_results", "directory of the runs and the table"),
                seeds=flags.DEFINE_list("seeds", ["0", "1", "2"], "training seeds"),
                config=flags.DEFINE_string("config", "configs/demo.py", "the demo config file"),
                steps=flags.DEFINE_integer("steps", None, "override train.steps (default: the config's)"))
  cli.run(functools.partial(main, f=_flags))
