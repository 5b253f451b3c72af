"""The package's layers only point down: every import of a smallfoot module (at module level
or inside a function) goes to its own layer or a lower one, and no technique imports another
technique. The order is documented in docs/internals.md."""

import ast
from pathlib import Path

import smallfoot

LAYERS: list[set[str]] = [
    {"errors", "_io", "_figures", "config", "testing", "plugins", "references"},
    {"data"},
    {"models", "losses"},
    {"memory"},
    {"train"},
    {"methods"},
    {
        "reversible",
        "facto",
        "manifold",
        "subspace",
        "layerwise",
        "closedform",
        "alternatives",
        "compress",
    },
    {"runner", "distributed"},
    {"bench", "claims", "plan"},
    {"cli", "__main__"},
]
"""Low to high; a module may import its own layer and the layers below."""

TECHNIQUES = LAYERS[6]
ROOT = Path(smallfoot.__file__).parent


def top_level(module: str) -> str:
    """``smallfoot.data.idx`` -> ``data``; ``smallfoot`` itself -> ``smallfoot``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def layer_of(name: str) -> int:
    for index, layer in enumerate(LAYERS):
        if name in layer:
            return index
    raise AssertionError(f"smallfoot.{name} is in no layer: add it to LAYERS and the docs")


def imports_of(path: Path) -> list[tuple[int, str]]:
    """(line, imported smallfoot module) of every import statement in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "smallfoot":
                found += [(node.lineno, f"smallfoot.{alias.name}") for alias in node.names]
            elif node.module.startswith("smallfoot."):
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("smallfoot.")]
    return found


def test_every_import_points_down_and_techniques_stay_apart():
    problems = []
    for path in sorted(ROOT.rglob("*.py")):
        relative = path.relative_to(ROOT.parent).with_suffix("")
        own = top_level(".".join(relative.parts))
        if own in ("smallfoot", "__init__"):
            continue  # the package's own __init__ exports the version only
        for line, module in imports_of(path):
            target = top_level(module)
            if target == own or target == "__version__":
                continue
            where = f"{path.relative_to(ROOT)}:{line} imports {module}"
            if layer_of(target) > layer_of(own):
                problems.append(f"{where} (layer {layer_of(target)} above {layer_of(own)})")
            elif own in TECHNIQUES and target in TECHNIQUES:
                problems.append(f"{where} (one technique importing another)")
    assert not problems, "\n".join(problems)


def test_the_check_sees_function_level_imports(tmp_path):
    source = tmp_path / "x.py"
    source.write_text("def f():\n    from smallfoot.methods import get_method\n")
    assert imports_of(source) == [(2, "smallfoot.methods")]
