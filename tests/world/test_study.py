"""The study's plumbing: the cells each phase trains, the cell's training config,
and the process pool (same results with one or two workers, progress to 100 %, a failing task's error)."""

import json

import pytest

from lpoi.config import Params, WorldParams
from lpoi.world.pool import Progress, Task, run_tasks
from lpoi.world.study import Cell, cell_train_config, final_cells, plan, tune_cells


def _params(**study) -> Params:
    w = WorldParams(name="shapes")
    return Params(world=w.model_copy(update={"study": w.study.model_copy(update=study)}))


def test_every_method_gets_the_same_tuning_grid_and_the_same_test_cells():
    p = _params()
    s = p.world.study
    tunes = tune_cells(p)
    per = {m: [c.config() for c in tunes if c.method == m] for m in s.methods}
    assert len({json.dumps(v) for v in per.values()}) == 1  # the same grid for every method
    assert len(per["lpoi"]) == len(s.tune.lr) * len(s.tune.beta) * len(s.tune.epochs)
    assert {(c.base, c.seed, c.split, c.mode) for c in tunes} == {(s.tune.base, s.tune.seed, "val", s.rejection)}
    selected = {m: {"lr": 1e-3, "beta": 0.1, "epochs": 1} for m in s.methods}
    cells = final_cells(p, selected)
    test = [c for c in cells if c.phase == "test"]
    keys = {m: sorted((c.base, c.seed) for c in test if c.method == m) for m in s.methods}
    assert all(v == keys["lpoi"] for v in keys.values()) and len(keys["lpoi"]) == s.bases * len(s.seeds)
    assert all(c.split == "test" and c.seed not in (s.tune.seed,) for c in cells)
    also = [c for c in cells if c.phase == "also"]
    assert sorted({c.method for c in also}) == sorted(s.also) and {c.mode for c in also} == {"insert"}
    assert len({c.name for c in cells + tunes}) == len(cells) + len(tunes)  # every cell its own folder
    assert plan(p, 400)["test_cells"] == len(cells)


def test_a_cell_trains_its_methods_objective_with_its_configuration():
    p = _params()
    m = p.world.study.methods["list_only"]
    cell = Cell("test", "list_only", 2, 3, 0.001, 0.5, 2, "substitute")
    cfg = cell_train_config(p.world.train, m, cell)
    assert (cfg.method, cfg.weights, cfg.lr, cfg.beta, cfg.epochs, cfg.seed) == ("lpoi", m.weights, 0.001, 0.5, 2, 3)
    assert cfg.weights.dpo == 0 and cfg.weights.anchor == 0 and cfg.batch_size == p.world.train.batch_size
    crop = cell_train_config(p.world.train, p.world.study.methods["mdpo_crop"], cell)
    assert (crop.method, crop.mdpo_corruption) == ("mdpo", "crop")


def _tasks():
    return [Task(f"t{i}", pow, (i, 3), cost=1 + i % 3) for i in range(7)]


def test_the_pool_gives_the_same_results_with_one_or_two_workers():
    lines = []
    prog = Progress(total=sum(t.cost for t in _tasks()), label="t", log=lines.append)
    two = run_tasks(_tasks(), workers=2, threads=1, progress=prog, phase="p")
    one = run_tasks(_tasks(), workers=1, threads=1)
    assert two == one == {f"t{i}": i ** 3 for i in range(7)}
    assert len(lines) == 7 and lines[-1].startswith("[t] p 7/7") and " 100% " in lines[-1] and "ETA 0m00s" in lines[-1]


def test_a_failing_task_raises_its_own_error():
    tasks = _tasks() + [Task("bad", int, ("not a number",), cost=99)]
    with pytest.raises(ValueError, match="not a number"):
        run_tasks(tasks, workers=2, threads=1)
