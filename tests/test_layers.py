"""The package's import graph goes down the layers without coming back: following a config from `train.py` to a
metrics row, each module imports only modules of lower layers (inside `data/` and `models/`, their own)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "zegot_jax"

# Lowest first. A module may import from strictly lower layers only; a subpackage's modules may also import each
# other. The entry points (command-line programs, tools, the demo) import nothing of each other.
LAYERS = [
    ["data"],
    ["models"],
    ["metrics", "selftrain", "config_lib", "segmenter", "from_config"],
    ["pictures", "checkpoints"],
    ["evaluation"],
    ["trainer"],
    ["train", "evaluate", "predict", "tools", "demo"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
  """'zegot_jax.models.zegot' → 'models'; 'zegot_jax.trainer' → 'trainer'."""
  return module.split(".")[1]


def _imports(path: pathlib.Path) -> set[str]:
  found = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zegot_jax"):
      if node.module == "zegot_jax":  # from zegot_jax import trainer, metrics
        found.update(f"zegot_jax.{a.name}" for a in node.names)
      else:
        found.add(node.module)
    elif isinstance(node, ast.Import):
      found.update(a.name for a in node.names if a.name.startswith("zegot_jax."))
  return found


def _graph() -> dict[str, set[str]]:
  graph = {}
  for path in sorted(PACKAGE.rglob("*.py")):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    if parts[-1] == "__init__" and len(parts) == 2:
      continue
    graph[".".join(parts)] = _imports(path)
  return graph


def test_every_module_has_a_layer():
  missing = sorted({_unit(m) for m in _graph()} - set(LAYER))
  assert not missing, f"modules without a layer in tests/test_layers.py: {missing}"


def test_imports_go_down_the_layers():
  upward = []
  for module, imports in _graph().items():
    here = _unit(module)
    for imported in imports:
      there = _unit(imported)
      if there == here and here in ("data", "models", "tools", "demo"):
        continue  # inside one subpackage
      if LAYER[there] >= LAYER[here]:
        upward.append(f"{module} imports {imported} (layer {LAYER[here]} → {LAYER[there]})")
  assert not upward, "\n".join(upward)


def test_data_does_not_know_the_model():
  """The datasets and their pipeline stand alone: nothing in data/ imports models/ or anything above."""
  for module, imports in _graph().items():
    if _unit(module) == "data":
      assert all(_unit(i) == "data" for i in imports), (module, imports)
