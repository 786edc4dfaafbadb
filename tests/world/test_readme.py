"""The README's world table is generated from metrics/world.json: its rows, the block replacement, the CLI."""

import json
import subprocess
import sys

import pytest

from lpoi.world.readme import COLUMNS, END, METHOD_LABELS, START, main, replace_block, table_markdown

METRICS = [k for k, _ in COLUMNS]


def _ci(mean, width=1.0):
    return {"mean": mean, "lo": mean - width, "hi": mean + width}


def _method(offset, selected):
    return {"selected": selected, "validation": {"Cog": 40.0 + offset, "Cover": 90.0},
            "test": {k: _ci(50.0 + offset + j) for j, k in enumerate(METRICS)},
            "vs_lpoi": {k: _ci(offset - 0.5 * j, 1.2) for j, k in enumerate(METRICS)},
            "heldout_ranking_accuracy": _ci(0.8, 0.05), "n": {"cells": 12, "bases": 3, "seeds": 4, "scenes": 1000}}


def world_json():
    w = {"design": {"bases": 3, "seeds_per_base": 4, "cells": 12, "test_scenes": 1000, "val_scenes": 300,
                    "n_boot": 1000, "configs_per_method": 6, "max_drop": 5.0},
         "base": {"test": {k: _ci(60.0) for k in METRICS}, "validation": {"Cog": 70.0, "Cover": 94.0}}}
    for i, m in enumerate(["dpo", "dpo_anchor", "mdpo", "mdpo_crop", "lpoi", "lpoi_k3", "lpoi_no_anchor",
                           "list_only"]):
        w[m] = _method(i - 4, {"lr": 0.0003, "epochs": 3, "beta": 0.1})
    w["insert"] = {m: {"test": w[m]["test"], "vs_lpoi": w[m]["vs_lpoi"]} for m in ("dpo", "mdpo", "lpoi")}
    return {"world": w}


def test_table_rows_every_method_in_order():
    t = table_markdown(world_json())
    rows = [line.split(" | ")[0][2:] for line in t.splitlines() if line.startswith("| ")]
    main_rows = rows[1:rows.index("method − LPOI")]
    methods = ["dpo", "dpo_anchor", "mdpo", "mdpo_crop", "lpoi", "lpoi_k3", "lpoi_no_anchor", "list_only"]
    assert main_rows == ["base (pretrained)"] + [METHOD_LABELS[m] for m in methods]
    diff_rows = rows[rows.index("method − LPOI") + 1:rows.index("model (insertion)")]
    assert diff_rows == [METHOD_LABELS[m] for m in methods if m != "lpoi"]
    assert "| DPO | 46.0 [45.0, 47.0] | 47.0 [46.0, 48.0] |" in t  # test metrics in COLUMNS order
    # dpo vs LPOI: CHAIR -4.0 [-5.2, -2.8] excludes 0 (bold); LPOI K=3 CHAIR +1.0 [-0.2, 2.2] does not
    assert "| DPO | **-4.0 [-5.2, -2.8]** |" in t and "| LPOI K=3 | +1.0 [-0.2, +2.2] |" in t
    assert "12 cells (3 bases × 4 seeds), 1000 test scenes" in t and "DPO: lr 0.0003, epochs 3, β 0.1" in t
    assert table_markdown(world_json()["world"]) == t  # the file or its "world" object
    for word in ("better", "worse", "best", "wins"):
        assert word not in t.lower()


def test_table_follows_the_json():
    w = world_json()
    w["world"]["new_method"] = _method(7, {"lr": 0.001})
    t = table_markdown(w)
    assert "| new_method | 57.0 [56.0, 58.0]" in t and "new_method: lr 0.001" in t
    w["world"]["dpo"]["test"]["Cog"] = {"mean": float("nan"), "lo": float("nan"), "hi": float("nan")}
    assert "| n/a |" in table_markdown(w)


def test_table_errors_name_the_key():
    w = world_json()
    del w["world"]["mdpo"]["test"]["Hal"]
    with pytest.raises(ValueError, match=r"world.mdpo.test has no 'Hal'"):
        table_markdown(w)
    w = world_json()
    del w["world"]["design"]["cells"]
    with pytest.raises(ValueError, match=r"world.design has no 'cells'"):
        table_markdown(w)


def test_replace_block():
    text = f"intro\n{START}\nold table\n{END}\noutro\n"
    new = replace_block(text, "| a |\n")
    assert new == f"intro\n{START}\n| a |\n{END}\noutro\n"
    assert replace_block(new, "| a |\n") == new
    with pytest.raises(ValueError, match="appears 0 times"):
        replace_block("no markers", "x")
    with pytest.raises(ValueError, match="appears 2 times"):
        replace_block(text + START, "x")
    with pytest.raises(ValueError, match="comes before"):
        replace_block(f"{END}\n{START}\n", "x")


def test_cli_writes_and_checks(tmp_path, capsys):
    metrics = tmp_path / "world.json"
    metrics.write_text(json.dumps(world_json()))
    readme, doc = tmp_path / "README.md", tmp_path / "miniature.md"
    readme.write_text(f"# x\n{START}\nstale\n{END}\n")
    doc.write_text(f"{START}\n{END}\ntail\n")
    args = ["--metrics", str(metrics), str(readme), str(doc)]
    assert main(args + ["--check"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "README.md" in err and "miniature.md" in err
    assert "stale" in readme.read_text()  # --check writes nothing
    assert main(args) == 0
    assert table_markdown(world_json()) in readme.read_text() and "tail" in doc.read_text()
    assert main(args + ["--check"]) == 0
    w = world_json()
    w["world"]["dpo"]["test"]["CHAIR"]["mean"] += 0.1  # one number moves: the check sees it
    metrics.write_text(json.dumps(w))
    assert main(args + ["--check"]) == 1


def test_cli_one_line_errors(tmp_path, capsys):
    metrics = tmp_path / "world.json"
    metrics.write_text(json.dumps(world_json()))
    nomark = tmp_path / "README.md"
    nomark.write_text("# no markers\n")
    assert main(["--metrics", str(metrics), str(nomark)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "README.md" in err and "world-table:start" in err
    assert main(["--metrics", str(tmp_path / "missing.json"), str(nomark)]) == 2
    assert "missing.json" in capsys.readouterr().err
    metrics.write_text("{not json")
    assert main(["--metrics", str(metrics), str(nomark)]) == 2


def test_cli_module_help():
    r = subprocess.run([sys.executable, "-m", "lpoi.world.readme", "--help"], capture_output=True, text=True,
                       check=False, timeout=60)
    assert r.returncode == 0 and "--check" in r.stdout and "--metrics" in r.stdout
