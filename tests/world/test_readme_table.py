"""The README's and the miniature page's study tables are the committed run's metrics/world.json, rendered: no
hand-copied number (regenerate with `python -m lpoi.world.readme --metrics docs/results/world.json README.md
docs/miniature.md` after copying a new run's metrics/world.json there)."""

import json

from headtree import head_tree

from lpoi.world.readme import END, START, main, table_markdown


def test_the_committed_tables_are_the_committed_run():
    root = head_tree()
    world = json.loads((root / "docs" / "results" / "world.json").read_text())
    table = table_markdown(world)
    for doc in ("README.md", "docs/miniature.md"):
        text = (root / doc).read_text()
        block = text[text.index(START) + len(START):text.index(END)]
        assert block.strip() == table.strip(), f"{doc}: the world table differs from docs/results/world.json"
    assert main(["--metrics", str(root / "docs/results/world.json"), str(root / "README.md"),
                 str(root / "docs/miniature.md"), "--check"]) == 0
    # the run it shows is the full study: >= 10 training runs over >= 3 bases and >= 1,000 test scenes per method
    d = world["world"]["design"]
    assert d["bases"] >= 3 and d["cells"] >= 10 and d["test_scenes"] >= 1000
    for m, v in world["world"].items():
        if isinstance(v, dict) and "selected" in v:
            assert v["n"] == {"cells": d["cells"], "bases": d["bases"], "seeds": d["seeds_per_base"],
                              "scenes": d["test_scenes"]}, m
