"""The package's import graph goes down the layers without coming back: following a config from `train.py` to a
metrics row, each module imports only modules of lower layers (inside `data/` and `models/`, their own)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "zegot_jax"

# Lowest first. A module may import from strictly lower layers only; a subpackage's modules may also import each
# other. The entry points (command-line programs, tools, the demo) import nothing of each other.
LAYERS = [
    ["errors"],
    ["data"],
    ["models"],
    ["train_config"],
    ["metrics", "selftrain", "config_lib", "segmenter", "from_config"],
    ["pictures", "checkpoints", "cli"],
    ["evaluation", "prediction"],
    ["trainer", "confidence"],
    ["train", "evaluate", "predict", "tools", "demo", "app"],
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _unit(module: str) -> str:
  """'zegot_jax.models.zegot' → 'models'; 'zegot_jax.trainer' → 'trainer'."""
  return module.split(".")[1]


def _is_main_block(node: ast.AST) -> bool:
  """`if __name__ == "__main__":`: the module run as a program, at the programs' layer (data/build.py's CLI)."""
  test = getattr(node, "test", None)
  return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
          and test.left.id == "__name__")


def _imports(path: pathlib.Path) -> set[str]:
  found = set()
  tree = ast.parse(path.read_text())
  tree.body = [node for node in tree.body if not _is_main_block(node)]
  for node in ast.walk(tree):
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
      if there == here and here in ("data", "models", "tools", "demo", "app"):
        continue  # inside one subpackage
      if LAYER[there] >= LAYER[here]:
        upward.append(f"{module} imports {imported} (layer {LAYER[here]} → {LAYER[there]})")
  assert not upward, "\n".join(upward)


def test_data_does_not_know_the_model():
  """The datasets and their pipeline stand alone: nothing in data/ imports models/ or anything above (errors.py,
  the user-error type, is below everything)."""
  for module, imports in _graph().items():
    if _unit(module) == "data":
      assert all(_unit(i) in ("data", "errors") for i in imports), (module, imports)


def _readme_tree() -> set[str]:
  """The paths the README's Layout block names, from its indented tree (two spaces a level)."""
  readme = (PACKAGE.parent / "README.md").read_text()
  block = readme.split("## Layout", 1)[1].split("```", 2)[1]
  paths, stack = set(), []
  for line in block.splitlines():
    if not line.strip():
      continue
    depth = (len(line) - len(line.lstrip(" "))) // 2
    name = line.split()[0]
    stack = stack[:depth] + [name.rstrip("/")]
    paths.add("/".join(stack) + ("/" if name.endswith("/") else ""))
  return paths


def test_readme_layout_matches_the_tree():
  """Every module of the package is in the README's layout, and everything the layout names exists."""
  named = _readme_tree()
  root = PACKAGE.parent
  missing_files = sorted(p for p in named if not (root / p).exists())
  assert not missing_files, f"the README's layout names what does not exist: {missing_files}"
  modules = {str(p.relative_to(root)) for p in PACKAGE.rglob("*.py") if p.name != "__init__.py"}
  listed_dirs = {p for p in named if p.endswith("/")}
  unlisted = sorted(m for m in modules if m not in named and pathlib.Path(m).parent.as_posix() + "/" not in
                    listed_dirs - {"zegot_jax/", "zegot_jax/data/", "zegot_jax/models/", "zegot_jax/demo/"})
  assert not unlisted, f"modules missing from the README's layout: {unlisted}"
