"""The docs: the MkDocs site builds with --strict (broken links fail), its configuration reference is generated
from lpoi/config.py, and the README stays a short page whose links resolve."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
TEST_COMMAND = 'pip install -e ".[test]" && pytest'


def _needs_mkdocs():
    for mod in ("mkdocs", "material", "mkdocs_gen_files"):
        if importlib.util.find_spec(mod) is None:
            pytest.skip(f"{mod} is not installed: pip install -e '.[docs]' (the test extra includes it)")


def _build(config: Path, site: Path) -> subprocess.CompletedProcess:
    # mkdocs 1.6 and material print banners about mkdocs 2; they are not build warnings
    env = {**os.environ, "DISABLE_MKDOCS_2_WARNING": "true", "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config), "-d", str(site)],
                          capture_output=True, text=True, env=env, timeout=300)


def _gen():
    spec = importlib.util.spec_from_file_location("gen_config_ref", REPO / "docs" / "gen_config_ref.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # its dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_mkdocs_build_strict(tmp_path):
    _needs_mkdocs()
    r = _build(REPO / "mkdocs.yml", tmp_path / "site")
    assert r.returncode == 0, r.stdout + r.stderr
    ref = (tmp_path / "site" / "reference" / "config" / "index.html").read_text(encoding="utf-8")
    assert "train.beta" in ref and "model.trust_remote_code" in ref


def test_strict_build_fails_on_a_broken_link(tmp_path):
    """What makes the build above worth running: a link to a missing page or heading fails it."""
    _needs_mkdocs()
    shutil.copytree(REPO / "docs", tmp_path / "docs")
    (tmp_path / "lpoi").mkdir()
    shutil.copy(REPO / "lpoi" / "config.py", tmp_path / "lpoi" / "config.py")  # what the reference reads
    shutil.copy(REPO / "mkdocs.yml", tmp_path / "mkdocs.yml")
    page = tmp_path / "docs" / "troubleshooting.md"
    page.write_text(page.read_text() + "\nSee [the old page](no-such-page.md), [a heading](caching.md#no-such-heading).\n")
    r = _build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert r.returncode != 0
    assert "no-such-page.md" in r.stdout + r.stderr and "no-such-heading" in r.stdout + r.stderr


def _leaf_keys(model, prefix=""):
    from pydantic import BaseModel

    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _leaf_keys(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def test_config_reference_documents_every_key():
    """Every key params.yaml validates appears in the generated reference (world.train.* by a pointer to
    train, whose keys it shares), with its docstring from the source."""
    from lpoi.config import Params

    text = _gen().render((REPO / "lpoi" / "config.py").read_text(encoding="utf-8"))
    keys = list(_leaf_keys(Params))
    assert len(keys) > 100
    missing = [k for k in keys if f"`{k}`" not in text and not k.startswith("world.train.")]
    assert not missing
    assert "### `world.train` {#world-train}" in text and "The same keys as [`train`](#train)." in text
    row = next(line for line in text.splitlines() if line.startswith("| `model.trust_remote_code` |"))
    assert "Off by default: enable only for models you have audited." in row and "`false`" in row


def test_config_reference_follows_the_source():
    """Generated, not copied: a new field's type, default, bounds and docstring show up as written."""
    gen = _gen()
    source = (REPO / "lpoi" / "config.py").read_text(encoding="utf-8")
    anchor = "class TrainParams(_Section):\n"
    assert anchor in source
    new = anchor + '    warmup_frac: float = Field(0.1, ge=0, lt=1)\n    """Share of steps for ``warmup``; a|b."""\n'
    row = next(line for line in gen.render(source.replace(anchor, new)).splitlines()
               if line.startswith("| `train.warmup_frac` |"))
    assert row == "| `train.warmup_frac` | `float` | `0.1` (≥ 0, < 1) | Share of steps for `warmup`; a\\|b. |"


def test_readme_is_short_and_keeps_ci_test_command():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 200
    assert TEST_COMMAND in text
    assert TEST_COMMAND in (REPO / ".ci" / "run").read_text()  # CI runs the README's test command


def _slug(heading: str) -> str:
    """Python-Markdown's default heading id (what MkDocs uses)."""
    text = re.sub(r"[`*_]", "", heading).strip().lower()
    text = re.sub(r"[^\w\s-]", "", text)
    return re.sub(r"[-\s]+", "-", text)


def _broken_links(readme: Path, root: Path) -> list[str]:
    """Relative links of ``readme`` (paths from ``root``, optionally #anchor) whose file or heading is missing."""
    text = re.sub(r"```.*?```", "", readme.read_text(encoding="utf-8"), flags=re.S)  # code blocks hold no links
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    broken = []
    for link in links:
        if re.match(r"[a-z][a-z0-9+.-]*:", link):  # http:, https:, mailto: ...
            continue
        path, _, anchor = link.partition("#")
        target = (root / path) if path else readme
        if not target.exists():
            broken.append(link)
        elif anchor and target.suffix == ".md":
            ids = {_slug(h) for h in re.findall(r"^#+\s+(.*?)\s*$", target.read_text(encoding="utf-8"), re.M)}
            if anchor not in ids:
                broken.append(link)
    return broken


def test_every_relative_link_in_the_readme_resolves():
    assert "](docs/" in README.read_text(encoding="utf-8")  # the README points into the docs
    assert _broken_links(README, REPO) == []


def test_broken_readme_links_are_found(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## NLTK data: what really happens\n")
    readme = tmp_path / "README.md"
    readme.write_text("# Top\n[ok](docs/a.md) [ok](docs/a.md#nltk-data-what-really-happens) [ok](#top)\n"
                      "[web](https://example.com/x) [gone](docs/b.md) [bad anchor](docs/a.md#nope)\n"
                      "```\n[in code](nowhere.md)\n```\n")
    assert _broken_links(readme, tmp_path) == ["docs/b.md", "docs/a.md#nope"]
