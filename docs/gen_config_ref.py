"""Generate the configuration reference (``reference/config.md``) from ``lpoi/config.py``.

Run by the mkdocs-gen-files plugin at every ``mkdocs build``; ``python docs/gen_config_ref.py`` prints the
page. The page is read off the source with ``ast`` rather than by importing ``lpoi.config``: the attribute
docstrings that document each key exist only in the source (pydantic keeps no trace of them), and the
build then needs neither the project's dependencies nor the right ``lpoi`` on ``sys.path``.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

CONFIG = Path(__file__).resolve().parents[1] / "lpoi" / "config.py"
PAGE = "reference/config.md"
ROOT = "Params"  # the class params.yaml validates into
_BOUNDS = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<"}


@dataclass
class Key:
    name: str
    type: str
    default: str
    doc: str
    section: str | None = None  # the class of a nested section


@dataclass
class Section:
    name: str
    doc: str
    keys: list[Key] = field(default_factory=list)


def _md(text: str) -> str:
    """A docstring as one Markdown table cell: rST ``code`` becomes `code`, lines join, pipes are escaped."""
    text = re.sub(r"``(.+?)``", r"`\1`", " ".join(text.split()))
    text = re.sub(r":(?:class|func|meth|attr):`~?([^`]+)`", r"`\1`", text)
    # a pipe ends a table cell except inside a code span, where an escape would show as a backslash
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(s if s.startswith("`") else s.replace("|", "\\|") for s in parts)


def _yaml(node: ast.expr) -> str:
    """A default as params.yaml spells it (null, true, a bare string) when it is a literal."""
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    return value if isinstance(value, str) else repr(value)


def _type(node: ast.expr) -> str:
    """``Literal['a', 'b'] | None`` -> ``'a', 'b' or None``; other annotations as written."""
    text = ast.unparse(node)
    text = re.sub(r"Literal\[(.*?)\]", lambda m: "one of " + m.group(1), text)
    return text.replace(" | ", " or ")


def _default(value: ast.expr | None) -> str:
    """``Field(0.2, ge=0, le=1)`` -> ``0.2`` (0 ≤ x ≤ 1); a literal as written."""
    if value is None:
        return "required"
    if isinstance(value, ast.Call) and ast.unparse(value.func) == "Field":
        kw = {k.arg: k.value for k in value.keywords}
        if value.args:
            shown = f"`{_yaml(value.args[0])}`"
        elif "default" in kw:
            shown = f"`{_yaml(kw['default'])}`"
        elif "default_factory" in kw:
            shown = f"`{ast.unparse(kw['default_factory'])}()`"
        else:
            shown = "required"
        bounds = [f"{_BOUNDS[k]} {ast.unparse(kw[k])}" for k in _BOUNDS if k in kw]
        return shown + (f" ({', '.join(bounds)})" if bounds else "")
    return f"`{_yaml(value)}`"


def parse(source: str) -> dict[str, Section]:
    """Every class of the module, with its annotated fields and their attribute docstrings, in order."""
    classes: dict[str, Section] = {}
    for node in ast.parse(source).body:
        if not isinstance(node, ast.ClassDef):
            continue
        sec = Section(node.name, _md(ast.get_docstring(node) or ""))
        body = node.body
        for i, stmt in enumerate(body):
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            nxt = body[i + 1] if i + 1 < len(body) else None
            doc = nxt.value.value if (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                                      and isinstance(nxt.value.value, str)) else ""
            ann = ast.unparse(stmt.annotation)
            sec.keys.append(Key(stmt.target.id, _type(stmt.annotation), _default(stmt.value), _md(doc),
                                section=ann if re.fullmatch(r"[A-Z]\w*", ann) else None))
        classes[node.name] = sec
    return classes


def _anchor(path: str) -> str:
    return path.replace(".", "-")


def render(source: str) -> str:
    classes = parse(source)
    out = [
        "# Configuration reference",
        "",
        "Every key of `params.yaml`, generated from the field docstrings of `lpoi/config.py` at each docs build",
        "(`docs/gen_config_ref.py`): to change a description, change the docstring. Values come from the",
        "profiles in `conf/` (`conf/config.yaml` and its groups); set one for an experiment with",
        "`dvc exp run -S section.key=value`. An unknown key, a wrong type or a value outside its bounds stops",
        "the run before anything starts, naming the key.",
        "",
    ]
    shown: dict[str, str] = {}  # class -> the dotted path where it was first documented

    def section(cls: str, path: str, level: int, doc: str = "") -> None:
        sec = classes[cls]
        heading = "#" * min(level, 6)
        out.extend([f"{heading} `{path}` {{#{_anchor(path)}}}", ""])
        if doc:  # the docstring of the key that holds this section
            out.extend([doc, ""])
        if cls in shown:
            out.extend([f"The same keys as [`{shown[cls]}`](#{_anchor(shown[cls])}).", ""])
            return
        shown[cls] = path
        if sec.doc:
            out.extend([sec.doc, ""])
        plain = [k for k in sec.keys if k.section not in classes]
        if plain:
            out.extend(["| key | type | default | meaning |", "|---|---|---|---|"])
            out.extend(f"| `{path}.{k.name}` | `{k.type}` | {k.default} | {k.doc} |" for k in plain)
            out.append("")
        for k in sec.keys:
            if k.section in classes:
                section(k.section, f"{path}.{k.name}", level + 1, k.doc)

    top = classes[ROOT]
    plain = [k for k in top.keys if k.section not in classes]
    if plain:
        out.extend(["## Top level {#top-level}", "", "| key | type | default | meaning |", "|---|---|---|---|"])
        out.extend(f"| `{k.name}` | `{k.type}` | {k.default} | {k.doc} |" for k in plain)
        out.append("")
    for k in top.keys:
        if k.section in classes:
            section(k.section, k.name, 2, k.doc)
    return "\n".join(out)


def main() -> None:
    text = render(CONFIG.read_text(encoding="utf-8"))
    try:
        import mkdocs_gen_files
    except ImportError:
        mkdocs_gen_files = None
    if mkdocs_gen_files is not None and __name__ == "<run_path>":  # under mkdocs build (runpy.run_path)
        with mkdocs_gen_files.open(PAGE, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text + "\n")


if __name__ in ("__main__", "<run_path>"):  # imported (the tests): render() only
    main()
