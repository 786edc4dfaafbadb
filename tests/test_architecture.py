"""Who may import whom (docs/ARCHITECTURE.md, "The house"): an AST check over lpoi/ and stages/.

Every ``import`` counts, at module level or inside a function (the project imports heavy packages
lazily, so a rule that looked at module level only would miss most edges). Dynamic imports
(``__import__``, ``importlib``) are not seen; the project uses them only in ``stages/_common.py``.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# the packages of lpoi, by layer; a module belongs to the first entry its dotted name starts with
BASE = ("lpoi.config", "lpoi.io", "lpoi.labels", "lpoi.nltk_data", "lpoi.download")
ENGINE = ("lpoi.stage", "lpoi.runner")
CAPABILITIES = ("lpoi.listgen", "lpoi.train", "lpoi.eval", "lpoi.report")
WORLD = "lpoi.world"

# what each layer may import besides itself (a capability: only its own package among the capabilities)
ALLOWED: dict[str, tuple[str, ...]] = {
    "base": ("base",),
    "models": ("base", "models"),
    "engine": ("base", "models", "engine"),
    "capability": ("base", "models", "engine"),
    # the miniature is an experiment built on the pipeline: it drives list generation, training and
    # evaluation through their public names, and never the report
    "world": ("base", "models", "engine", "lpoi.listgen", "lpoi.train", "lpoi.eval", "world"),
}


def package_of(module: str) -> tuple[str, str] | None:
    """(layer, package) of an lpoi module; None for ``lpoi`` itself and anything outside it."""
    for layer, names in (("base", BASE), ("engine", ENGINE), ("capability", CAPABILITIES),
                         ("models", ("lpoi.models",)), ("world", (WORLD,))):
        for name in names:
            if module == name or module.startswith(name + "."):
                return layer, name
    return None


def _imports(root: Path, path: Path, module: str) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, imported names) for every lpoi import of a file, relative ones resolved."""
    is_pkg = path.name == "__init__.py"
    here = module.split(".") if is_pkg else module.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names if a.name.split(".")[0] == "lpoi"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "lpoi":
                continue
            names = [a.name for a in node.names]
            # `from lpoi.models import logits` imports the submodule lpoi.models.logits
            modules = [n for n in names if _is_module(root, f"{target}.{n}")]
            out += [(node.lineno, f"{target}.{n}", []) for n in modules]
            if len(modules) < len(names) or not names:
                out.append((node.lineno, target, [n for n in names if n not in modules]))
    return out


def _is_module(root: Path, module: str) -> bool:
    path = root.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _world_stages(root: Path) -> set[str]:
    """Scripts of the miniature's own stages: those whose dvc.yaml entry declares ``lpoi/world/off.py``
    (the switch that makes them no-ops when the world is off)."""
    import yaml

    path = root / "dvc.yaml"
    if not path.is_file():
        return set()
    scripts = set()
    for entry in yaml.safe_load(path.read_text())["stages"].values():
        entry = entry.get("do", entry)
        if "lpoi/world/off.py" in [d for d in entry.get("deps", []) if isinstance(d, str)] or \
                "lpoi/world" in entry.get("deps", []):
            scripts |= {Path(w).stem for w in entry["cmd"].split() if w.startswith("stages/")}
    return scripts


def violations(root: Path) -> list[str]:
    """Every forbidden import under ``root`` (a checkout: ``root/lpoi`` and, if present, ``root/stages``)."""
    bad = []
    for path in sorted((root / "lpoi").rglob("*.py")):
        rel = path.relative_to(root)
        module = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        src = package_of(module)
        if src is None:
            continue
        layer, package = src
        for line, target, names in _imports(root, path, module):
            dst = package_of(target)
            if dst is None or dst[1] == package:
                continue
            where = f"{rel}:{line} imports {target}"
            if dst[0] not in ALLOWED[layer] and dst[1] not in ALLOWED[layer]:
                bad.append(f"{where}: {layer} {package} may not import {dst[0]} {dst[1]}")
            elif private := [n for n in names if n.startswith("_")]:
                bad.append(f"{where}: {', '.join(private)} is internal to {dst[1]}")
    world_stages = _world_stages(root)
    for path in sorted((root / "stages").glob("*.py")) if (root / "stages").is_dir() else []:
        if path.stem in world_stages:
            continue
        for line, target, _ in _imports(root, path, f"stages.{path.stem}"):
            if target == WORLD or target.startswith(WORLD + "."):
                bad.append(f"{path.relative_to(root)}:{line} imports {target}: the pipeline never imports the miniature")
    return bad


def test_the_project_keeps_its_import_contract():
    assert violations(REPO) == []


def _copy(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    shutil.copytree(REPO / "lpoi", root / "lpoi", ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.txt"))
    shutil.copytree(REPO / "stages", root / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    assert violations(root) == []
    return root


@pytest.mark.parametrize(("file", "line", "expect"), [
    ("lpoi/models/sam.py", "from lpoi.listgen.segment import mask_file", "models lpoi.models may not import capability lpoi.listgen"),
    ("lpoi/eval/generate.py", "from lpoi.train.logprobs import sequence_logps", "may not import capability lpoi.train"),
    ("lpoi/eval/scoring.py", "from lpoi.report.summary import ROWS", "may not import capability lpoi.report"),
    ("lpoi/listgen/verify.py", "    from lpoi.world import scenes", "may not import world lpoi.world"),
    ("lpoi/runner.py", "from lpoi.listgen import prepare", "engine lpoi.runner may not import capability lpoi.listgen"),
    ("lpoi/world/results.py", "from lpoi.report.figures import save_png", "world lpoi.world may not import capability lpoi.report"),
    ("lpoi/world/study.py", "from lpoi.train.recipe import _check", "_check is internal to lpoi.train"),
    ("lpoi/report/build.py", "from ..listgen.detect import run_detect", "may not import capability lpoi.listgen"),
    ("stages/detect.py", "import lpoi.world.scenes", "the pipeline never imports the miniature"),
])
def test_a_forbidden_import_is_caught(tmp_path, file, line, expect):
    root = _copy(tmp_path)
    path = root / file
    path.write_text(path.read_text() + "\n\ndef _added():\n" + "    " + line.strip() + "\n")
    found = violations(root)
    assert len(found) == 1 and expect in found[0] and file in found[0], found
