"""The miniature's study: every method tuned alike on validation, then tested over bases and seeds.

One stage (``world_grid`` in dvc.yaml) runs it, so one fingerprint covers it:

1. **References** of every base on the training lists each cell needs (and on the held-out lists), through
   the project's :func:`lpoi.train.reference.run_reference`; **the bases** answer the validation and test
   benchmarks.
2. **Tuning** (``world.study.tune``): every method of ``world.study.methods`` is trained with every
   configuration of the *same* grid (lr x beta x epochs), from base ``tune.base`` with the training seed
   ``tune.seed`` (not a test seed), and scored on the **validation** scenes only.
3. **Selection** (``world.study.select``, fixed in the config before any test number exists): per method,
   :func:`lpoi.world.stats.select` over the validation numbers -- it is never given a test number.
4. **Test**: each method's selected configuration trained from every base with every seed
   (``bases x seeds`` cells, the same cells for every method: paired), scored on the **test** scenes, plus
   the held-out list log-ratios; the methods of ``study.also`` once more with the other rejection.

A cell is the project's trainer (:func:`train_cell`), generation code and AMBER scorer, nothing world-specific;
its folder ends with ``done.json`` (a pure function of its inputs: wall times are not in it), so a killed
study resumes with the finished cells kept. Cells run in ``world.study.workers`` processes
(:mod:`lpoi.world.pool`): the results do not depend on how many.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from lpoi.config import Params, TrainParams, WorldMethodParams
from lpoi.io import atomic_write_json, read_json, read_jsonl
from lpoi.world.lists import manifest_path
from lpoi.world.pool import Progress, Task, run_tasks

__all__ = ["Cell", "StudyPaths", "cell_train_config", "final_cells", "plan", "run_study",
           "train_cell", "tune_cells"]

MAX_LENGTH = 512  # tokens per sequence; the world's captions and image tokens stay far below it (no truncation)
MODES = ("substitute", "insert")
# relative costs for the ETA (measured on this 2-core machine, world.threads 1): one training sequence
# (forward + backward) = 1; one benchmark scene (a description and its yes/no questions) ~ 1.3; one reference
# sequence ~ 0.35
_EVAL_COST, _REF_COST = 1.3, 0.35


@dataclass(frozen=True)
class StudyPaths:
    world_dir: Path  # world_data's output
    lists_dir: Path  # world_lists' output
    models_dir: Path  # the pretrain stage's output: base-0, base-1, ...
    out_dir: Path  # the stage's persisted work folder

    def bench(self, split: str) -> Path:
        return self.world_dir / "bench" / ("amber" if split == "test" else "amber-val")

    def images(self, split: str) -> Path:
        return self.world_dir / split / "images"

    def base(self, i: int) -> str:
        return str(self.models_dir / f"base-{i}")

    def manifest(self, name: str) -> Path:
        """world_lists' manifest ``name`` (:func:`manifest_name`)."""
        split, rest = name.split("/")
        mode, _, k = rest.partition("-k")
        return manifest_path(self.lists_dir, split, mode, int(k) if k else None)

    def reference(self, base: int, manifest: str) -> Path:
        return self.out_dir / "reference" / f"base-{base}" / f"{manifest.replace('/', '-')}.jsonl"


@dataclass(frozen=True)
class Cell:
    """One training run: ``phase`` tune (validation scenes) or test / also (test scenes)."""

    phase: str
    method: str
    base: int
    seed: int
    lr: float
    beta: float
    epochs: int
    mode: str

    @property
    def split(self) -> str:
        return "val" if self.phase == "tune" else "test"

    @property
    def name(self) -> str:
        return (f"{self.phase}/{self.method}/b{self.base}-s{self.seed}-lr{self.lr:g}-beta{self.beta:g}-e{self.epochs}"
                f"-{self.mode}")

    def config(self) -> dict:
        return {"lr": self.lr, "beta": self.beta, "epochs": self.epochs}


def manifest_name(split: str, mode: str, k: int | None = None, K: int | None = None) -> str:
    """``pairs/substitute``, ``pairs/substitute-k3``, ``test/substitute``: a manifest of world_lists and the name
    of its reference file."""
    return f"{split}/{mode}" if k is None or k == K else f"{split}/{mode}-k{k}"


def cell_train_config(train: TrainParams, m: WorldMethodParams, cell: Cell) -> TrainParams:
    """``world.train`` with the cell's objective, configuration and seed (``model_copy`` re-validates nothing, so
    every replaced value comes from a validated section)."""
    return train.model_copy(update={"method": m.method, "weights": m.weights, "mdpo_corruption": m.mdpo_corruption,
                                    "lr": cell.lr, "beta": cell.beta, "epochs": cell.epochs, "seed": cell.seed,
                                    "save_steps": 0, "merge": False})


def train_cell(cfg: TrainParams, model_name: str, lists_path: Path, reference_path: Path, out_dir: Path) -> dict:
    """LoRA preference training of one cell: the project's training recipe, called in one place (no checkpoints,
    no dvclive folder: a killed cell restarts from scratch)."""
    from lpoi.config import ModelParams, ReferenceParams
    from lpoi.train.recipe import TrainPaths, train

    paths = TrainPaths(lists=Path(lists_path), reference=Path(reference_path), out=Path(out_dir))
    return train(cfg, ModelParams(name=model_name), ReferenceParams(max_length=MAX_LENGTH), paths, progress=False)


# ---------------------------------------------------------------------------------------------- tasks (in workers)


def _evaluate(model, processor, p: Params, paths: StudyPaths, split: str, out: Path) -> dict:
    """Answers of ``split``'s benchmark, the AMBER scorer's metrics and the per-scene contributions that the
    bootstrap resamples (:func:`lpoi.world.stats.item_contributions`)."""
    from lpoi.eval.benchmarks import amber
    from lpoi.eval.generate import generate_answers
    from lpoi.world import stats

    bench = paths.bench(split)
    items = amber.generation_items(bench, paths.images(split))
    generate_answers(model, processor, items, out / "answers.jsonl", batch_size=p.world.eval.batch_size,
                     max_new_tokens=p.world.eval.max_new_tokens, yes_no="logits", progress=False)
    scores = amber.score_file(out / "answers.jsonl", bench, out / "amber.json", similarity="exact",
                              details_path=out / "details.jsonl")
    scene_ids = [r["id"] for r in read_jsonl(paths.world_dir / split / "scenes.jsonl")]
    contrib = stats.item_contributions(list(read_jsonl(out / "details.jsonl")), read_json(bench / "annotations.json"),
                                       read_json(bench / "questions.json"), scene_ids=scene_ids)
    metrics = {"CHAIR": scores["generative"]["CHAIR"], "Cover": scores["generative"]["Cover"],
               "Hal": scores["generative"]["Hal"], "Cog": scores["generative"]["Cog"],
               "Accuracy": scores["discriminative"]["overall"]["Accuracy"],
               "F1": scores["discriminative"]["overall"]["F1"]}
    for name in ("partner_no", "present_yes"):
        num, den = contrib[name]
        metrics[name] = round(100 * sum(num) / max(sum(den), 1e-9), 1)
    (out / "details.jsonl").unlink()  # the contributions keep what the bootstrap needs
    return {"metrics": metrics, "contrib": {k: [list(map(float, a)) for a in v] for k, v in contrib.items()}}


def reference_task(p: Params, manifest: Path, out: Path, base_model: str) -> str:
    from lpoi.train.reference import run_reference

    # run_reference keeps a finished file with the same meta and resumes a killed one
    run_reference(manifest, out, model_name=base_model, micro_batch_sequences=p.world.train.micro_batch_sequences,
                  max_length=MAX_LENGTH, device="cpu", progress=False)
    return str(out)


def base_task(p: Params, paths: StudyPaths, base: int, split: str) -> dict:
    from lpoi.eval.generate import load_for_generation

    out = paths.out_dir / "base" / f"b{base}-{split}"
    if (out / "done.json").exists():
        return read_json(out / "done.json")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model, processor = load_for_generation(paths.base(base), device="cpu")
    result = {"base": base, "split": split, "eval": _evaluate(model, processor, p, paths, split, out)}
    atomic_write_json(out / "done.json", result)
    return result


def heldout_rewards(model, heldout) -> dict:
    """Mean log-ratios ``log pi - log pi_ref`` (beta 1: comparable across cells whatever their beta) of the chosen
    answer per list position on held-out lists, the rejected answer's, and the share of adjacent list pairs ranked
    by visibility (:func:`lpoi.train.losses.reward_stats`, as training logs them)."""
    import torch

    from lpoi.train.logprobs import sequence_logps
    from lpoi.train.losses import reward_stats

    k = heldout["k"]
    with torch.no_grad():
        pol = torch.cat([sequence_logps(model, b).view(-1, k + 1).cpu() for b in heldout["batches"]])
    r = reward_stats(pol[:, :k], pol[:, k], heldout["reference_list"], heldout["reference_rejected"], 1.0)
    return {"visibility": heldout["visibility"], "log_ratio": r["rewards"].mean(0).tolist(),
            "rejected": float(r["rewards_rejected"].mean()), "ranking_accuracy": float(r["ranking_accuracy"]),
            "reward_accuracy": float(r["reward_accuracy"]), "n": int(pol.shape[0])}


def load_heldout(processor, manifest: Path, reference: Path, model_name: str, batch_size: int = 8) -> dict:
    from lpoi.train.collate import collate_samples
    from lpoi.train.data import load_lists
    from lpoi.train.reference import load_reference

    samples = load_lists(manifest)
    ref_list, ref_rej, _ = load_reference(reference, samples, model_name=model_name, max_length=MAX_LENGTH)
    k = samples[0].k
    batches = [collate_samples(processor, samples[s:s + batch_size], columns=tuple(range(k)), max_length=MAX_LENGTH)
               for s in range(0, len(samples), batch_size)]
    return {"visibility": next(iter(read_jsonl(manifest)))["visibility"], "k": k, "batches": batches,
            "reference_list": ref_list, "reference_rejected": ref_rej}


def cell_task(p: Params, paths: StudyPaths, cell: Cell) -> dict:
    """Train, answer, score (and on test cells: the held-out log-ratios); ``done.json`` kept when there."""
    from lpoi.eval.generate import load_for_generation

    out = paths.out_dir / "cells" / cell.name
    if (out / "done.json").exists():
        return read_json(out / "done.json")
    shutil.rmtree(out, ignore_errors=True)  # a cell killed half-way restarts from scratch
    out.mkdir(parents=True)
    m = p.world.study.methods[cell.method]
    cfg = cell_train_config(p.world.train, m, cell)
    manifest = manifest_name("pairs", cell.mode, m.k, p.world.lists.k)
    summary = train_cell(cfg, paths.base(cell.base), paths.manifest(manifest), paths.reference(cell.base, manifest), out)
    hist = summary["history"]
    model, processor = load_for_generation(paths.base(cell.base), adapter_dir=out / "adapter", device="cpu")
    result = {"cell": asdict(cell), "name": cell.name,
              "train": {"steps": summary["steps"], "loss_first10": _mean(h["loss"] for h in hist[:10]),
                        "loss_last10": _mean(h["loss"] for h in hist[-10:])},
              "eval": _evaluate(model, processor, p, paths, cell.split, out)}
    if cell.phase == "test":
        held_name = manifest_name("test", p.world.study.rejection)
        held = load_heldout(processor, paths.manifest(held_name), paths.reference(cell.base, held_name),
                            paths.base(cell.base))
        result["rewards"] = heldout_rewards(model, held)
    shutil.rmtree(out / "adapter", ignore_errors=True)  # ~0.2 MB a cell; the cell is reproducible from its inputs
    atomic_write_json(out / "done.json", result)
    return result


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


# ---------------------------------------------------------------------------------------------- the plan


def _seqs(m: WorldMethodParams, K: int) -> int:
    """Sequences per pair trained (chosen on each image used + rejected; the crop's reference runs online)."""
    if m.method == "dpo":
        return 2
    if m.method == "mdpo":
        return 4 if m.mdpo_corruption == "crop" else 3
    return (m.k or K) + 1


def tune_cells(p: Params) -> list[Cell]:
    s = p.world.study
    return [Cell("tune", m, s.tune.base, s.tune.seed, lr, beta, ep, s.rejection)
            for m in s.methods for lr in s.tune.lr for beta in s.tune.beta for ep in s.tune.epochs]


def final_cells(p: Params, selected: dict[str, dict]) -> list[Cell]:
    s = p.world.study
    other = _other(s.rejection)
    out = []
    for phase, methods, mode, seeds in (("test", list(s.methods), s.rejection, s.seeds),
                                        ("also", s.also, other, s.also_seeds)):
        for m in methods:
            c = selected[m]
            out += [Cell(phase, m, b, seed, c["lr"], c["beta"], c["epochs"], mode)
                    for b in range(s.bases) for seed in seeds]
    return out


def plan(p: Params, n_pairs: int) -> dict:
    """The study's size before it runs (for the ETA and the log): cells per phase and their relative cost."""
    s = p.world.study
    tunes = tune_cells(p)
    # before selection the test cells' epochs are unknown: the grid's mean stands in for them
    mean_epochs = sum(s.tune.epochs) / len(s.tune.epochs)
    tests = final_cells(p, dict.fromkeys(s.methods, {"lr": 0.0, "beta": 0.0, "epochs": mean_epochs}))
    return {"tune_cells": len(tunes), "test_cells": len(tests),
            "cost": {"tune": sum(_cost(p, c, n_pairs) for c in tunes),
                     "test": sum(_cost(p, c, n_pairs) for c in tests)}}


def _cost(p: Params, cell: Cell, n_pairs: int) -> float:
    scenes = p.world.n_val if cell.phase == "tune" else p.world.n_test
    return n_pairs * _seqs(p.world.study.methods[cell.method], p.world.lists.k) * cell.epochs + _EVAL_COST * scenes


def _manifests(p: Params, paths: StudyPaths) -> dict[str, int]:
    """The manifests the study reads (per rejection, per list length, and the held-out one) and their rows."""
    from lpoi.runner import count_rows

    s, K = p.world.study, p.world.lists.k
    names = [manifest_name("pairs", mode, s.methods[m].k, K)
             for mode, methods in ((s.rejection, list(s.methods)), (_other(s.rejection), s.also)) for m in methods]
    names.append(manifest_name("test", s.rejection))
    return {n: count_rows(paths.manifest(n)) for n in dict.fromkeys(names)}


def _other(mode: str) -> str:
    return next(x for x in MODES if x != mode)


def run_study(p: Params, paths: StudyPaths, *, log=print) -> dict:
    """Everything above; returns ``{"plan", "bases": {split: [base results]}, "tune": [...], "selected": {method:
    {"index", "config", "validation", "reason"}}, "test": [...], "also": [...]}``."""
    from lpoi.world import stats

    s, K, threads, workers = p.world.study, p.world.lists.k, p.world.threads, p.world.study.workers
    paths.out_dir.mkdir(parents=True, exist_ok=True)
    counts = _manifests(p, paths)
    n_pairs = counts[manifest_name("pairs", s.rejection)]
    pl = plan(p, n_pairs)
    log(f"[world_grid] {pl['tune_cells']} tuning cells (validation), then {pl['test_cells']} test cells; "
        f"{workers} worker process(es) x {threads} thread(s)")

    # 1. references and the bases' answers
    # every base trains test cells on every manifest (the tuning base on the primary rejection's too)
    ref_tasks = [Task(f"reference b{b} {name}", reference_task,
                      (p, paths.manifest(name), paths.reference(b, name), paths.base(b)), cost=_REF_COST * n * (K + 1))
                 for b in range(s.bases) for name, n in counts.items()]
    base_tasks = [Task(f"base b{b} {split}", base_task, (p, paths, b, split),
                       cost=_EVAL_COST * (p.world.n_test if split == "test" else p.world.n_val))
                  for b in range(s.bases) for split in ("val", "test") if split == "test" or b == s.tune.base]
    tunes = tune_cells(p)
    tune_tasks = [Task(c.name, cell_task, (p, paths, c), cost=_cost(p, c, n_pairs)) for c in tunes]
    est_test = pl["cost"]["test"]
    progress = Progress(total=sum(t.cost for t in ref_tasks + base_tasks + tune_tasks) + est_test, label="world_grid",
                        log=log)
    run_tasks(ref_tasks, workers=workers, threads=threads, progress=progress, phase="references")
    bases = run_tasks(base_tasks, workers=workers, threads=threads, progress=progress, phase="bases")
    tune_res = run_tasks(tune_tasks, workers=workers, threads=threads, progress=progress, phase="tune")
    tune_list = [tune_res[c.name] for c in tunes]

    # 2. selection: validation numbers only
    base_val = bases[f"base b{s.tune.base} val"]["eval"]["metrics"]
    selected = {}
    for m in s.methods:
        rows = [r for r in tune_list if r["cell"]["method"] == m]
        configs = [{"lr": r["cell"]["lr"], "beta": r["cell"]["beta"], "epochs": r["cell"]["epochs"]} for r in rows]
        idx, reason = stats.select(configs, [r["eval"]["metrics"] for r in rows], base_val, s.select)
        selected[m] = {"index": idx, "config": configs[idx], "validation": rows[idx]["eval"]["metrics"], "reason": reason}
        log(f"[world_grid] {m}: selected {configs[idx]} ({reason})")

    # 3. test cells, with the actual selected epochs replacing the estimate in the ETA
    tests = final_cells(p, {m: v["config"] for m, v in selected.items()})
    test_tasks = [Task(c.name, cell_task, (p, paths, c), cost=_cost(p, c, n_pairs)) for c in tests]
    progress.add_total(sum(t.cost for t in test_tasks) - est_test)
    test_res = run_tasks(test_tasks, workers=workers, threads=threads, progress=progress, phase="test")
    return {"plan": pl, "manifests": counts,
            "bases": {split: [bases[f"base b{b} {split}"] for b in range(s.bases) if f"base b{b} {split}" in bases]
                      for split in ("val", "test")},
            "tune": tune_list, "selected": selected,
            "test": [test_res[c.name] for c in tests if c.phase == "test"],
            "also": [test_res[c.name] for c in tests if c.phase == "also"]}
