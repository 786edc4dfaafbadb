"""``lpoi-compare`` / ``python -m lpoi.report.compare`` on a ``dvc exp show --json`` captured from DVC 3.67:
a baseline (train.beta 0.1) and two experiments, ``beta02`` (-S train.beta=0.2) and ``lr-up``
(-S train.lr=1e-5), each with the project's metrics/summary.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lpoi.report.compare import compare_table, load_runs, main, select
from lpoi.report.summary import ROWS, build_summary, direction, flat

FIXTURE = Path(__file__).parent / "fixtures" / "exp_show.json"


@pytest.fixture(scope="module")
def runs():
    return load_runs(json.loads(FIXTURE.read_text()))


def test_every_row_of_exp_show_is_a_run_with_its_params_and_summary(runs):
    assert [r.name for r in runs] == ["workspace", "master", "lr-up", "beta02"]
    beta = runs[-1]
    assert beta.params["train.beta"] == 0.2 and beta.metrics["amber.CHAIR"] == 92.9
    assert runs[1].metrics["amber.CHAIR"] == 91.7 and runs[1].rev.startswith("9bbeacb")


def test_two_runs_side_by_side_with_directions_and_verdicts(runs, capsys):
    assert main(["--json", str(FIXTURE), "master", "beta02"]) == 0
    out = capsys.readouterr().out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip()}
    assert "train.beta  master=0.1  beta02=0.2" in out  # what the column changed
    assert "train.lr" not in out  # equal in both runs
    assert "amber.CHAIR ↓" in lines["amber.CHAIR"] and lines["amber.CHAIR"].endswith("92.9  (+1.2 worse)")
    assert "amber.Cover ↑" in lines["amber.Cover"] and lines["amber.Cover"].endswith("3.5  (+0.4 better)")
    assert lines["train.loss"].endswith("5.9635  (-0.12 better)")
    assert "amber.Hal" not in lines  # equal everywhere: left out unless --all


def test_all_metrics_and_revision_prefixes(runs):
    table = compare_table(select(runs, ["9bbeacb", "lr-up"]), all_metrics=True)
    assert "amber.Hal ↓" in table and "lists.lists " in table and "(=)" in table
    assert "lists.reject_rate ↓" in table


def test_an_unknown_run_is_one_line_naming_the_known_ones(capsys):
    assert main(["--json", str(FIXTURE), "exp-nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: no run named 'exp-nope' in `dvc exp show` (known: workspace, master, lr-up, beta02)"


def test_one_direction_table_for_the_summary_and_the_miniature():
    assert {r.key: direction(r.key) for r in ROWS} == {r.key: r.better for r in ROWS}
    assert direction("world.lpoi.CHAIR") == "↓" and direction("world.dpo.Cover") == "↑"
    assert direction("world.mdpo.heldout_ranking_accuracy") == "↑" and direction("lists.lists") == ""


def test_the_miniature_is_in_the_summary_only_when_it_ran():
    ci = lambda m: {"mean": m, "lo": m - 1, "hi": m + 1}  # noqa: E731
    world = {"world": {"design": {"bases": 3, "cells": 12},
                       "base": {"test": {"CHAIR": ci(12.4), "Cover": ci(90.0), "Cog": ci(50.0)}},
                       "lpoi": {"selected": {"lr": 1e-3}, "test": {"CHAIR": ci(12.0), "Cover": ci(91.0), "Cog": ci(40.0)},
                                "heldout_ranking_accuracy": ci(0.6)},
                       "insert": {"lpoi": {"test": {"Cog": ci(1.0)}}}}}
    on = flat(build_summary({"world": world}, random_model=False))
    assert {k: v for k, v in on.items() if k.startswith("world.")} == {
        "world.base.Cover": 90.0, "world.base.Cog": 50.0, "world.lpoi.Cover": 91.0, "world.lpoi.Cog": 40.0}
    for off in ({}, None):  # world: none writes {}; an older run has no file
        assert not any(k.startswith("world") for k in flat(build_summary({"world": off}, random_model=False)))
