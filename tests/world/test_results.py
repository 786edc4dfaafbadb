"""Tabulating the grid: means and sample stds over seeds by hand, the table's rows, the plot file."""

import math

import pytest
from PIL import Image

from lpoi.world.results import metrics_view, plot_rewards, summarize, table_markdown


def _amber(chair, acc):
    return {"generative": {"CHAIR": chair, "Cover": 90.0, "Hal": 2 * chair, "Cog": 50.0},
            "discriminative": {"overall": {"Accuracy": acc, "Precision": 90.0, "Recall": 80.0, "F1": acc - 1}}}


def _cell(method, seed, chair, acc, rewards):
    return {"cell": f"{method}-s{seed}", "method": method, "seed": seed, "amber": _amber(chair, acc),
            "train": {"loss_first10": 0.7, "loss_last10": 0.5 - seed / 10, "seconds": 1.0},
            "rewards": {"visibility": [1.0, 0.5, 0.0], "reward": rewards, "rejected": -1.0,
                        "reward_accuracy": 1.0, "ranking_accuracy": 0.5 + seed / 4}}


GRID = {
    "base": {"method": "base", "amber": _amber(12.4, 88.4)},
    "cells": [_cell("lpoi", 1, 14.0, 90.0, [0.0, -1.0, -3.0]), _cell("dpo", 0, 11.0, 80.0, [0.1, 0.1, 0.1]),
              _cell("lpoi", 0, 10.0, 86.0, [0.0, -0.5, -1.0]), _cell("dpo", 1, 11.0, 82.0, [0.3, 0.2, 0.1])],
}


def test_summary_means_and_sample_stds():
    s = summarize(GRID)
    assert list(s["methods"]) == ["base", "lpoi", "dpo"] and s["seeds"] == [0, 1]
    chair = s["methods"]["lpoi"]["CHAIR"]
    assert chair["values"] == [10.0, 14.0]  # ordered by seed
    assert chair["mean"] == 12.0 and chair["std"] == pytest.approx(math.sqrt(8))  # ((10-12)^2 + (14-12)^2) / (2-1)
    assert s["methods"]["dpo"]["CHAIR"]["std"] == 0.0 and s["methods"]["dpo"]["F1"]["mean"] == 80.0
    assert s["methods"]["base"]["CHAIR"] == {"mean": 12.4, "std": 0.0, "n": 1, "values": [12.4]}
    r = s["rewards"]["lpoi"]
    assert [x["mean"] for x in r["reward"]] == [0.0, -0.75, -2.0]
    assert r["ranking_accuracy"]["mean"] == 0.625
    assert s["training"]["dpo"]["loss_last10"]["values"] == [0.5, 0.4]


def test_table_and_metrics_view():
    s = summarize(GRID)
    table = table_markdown(s)
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")]
    assert rows[0].startswith("| model | CHAIR ↓ | Cover ↑ | Hal ↓ | Cog ↓")
    assert rows[1].startswith("| base (pretrained) | 12.4 | 90.0 | 24.8 | 50.0 | 88.4 | 87.4 |")
    assert rows[2].startswith("| LPOI | 12.0 ± 2.8 |") and rows[3].startswith("| DPO | 11.0 ± 0.0 |")
    assert "vis 1 | vis 0.5 | vis 0 |" in table and "| LPOI | 0.000 ± 0.000 | -0.750 ± 0.354 |" in table
    m = metrics_view(s)
    assert list(m) == ["world"]  # the miniature's keys never read like the pipeline's (issue 23)
    m = m["world"]
    assert m["base"]["CHAIR"] == 12.4 and m["lpoi"]["CHAIR"] == {"mean": 12.0, "std": pytest.approx(math.sqrt(8))}
    assert m["lpoi"]["heldout_reward"] == {"vis_1": 0.0, "vis_0.5": -0.75, "vis_0": -2.0}


def test_plot_is_written(tmp_path):
    path = tmp_path / "plots" / "rewards.png"
    plot_rewards(summarize(GRID), path)
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
