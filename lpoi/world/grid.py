"""The comparison: DPO, mDPO and LPOI trained from the same base for the same steps, over several seeds.

One grid stage does it all, so one fingerprint covers it (``world_grid`` in dvc.yaml):

1. reference log-probs of the base on the training lists and on the held-out lists
   (:func:`lpoi.train.reference.run_reference`, computed once, shared by every cell);
2. the base model on the benchmark (the "base" row);
3. per cell ``(method, seed)``: LoRA training with ``world.train`` (``method``/``seed`` replaced) through
   :func:`train_cell` -- the project's trainer, nothing world-specific -- then the benchmark and the
   list-position rewards on the held-out lists.

Every model answers the world's AMBER-format benchmark through the pipeline's own generation code
(:func:`lpoi.eval.generate.generate_answers`: greedy descriptions, yes/no by the "Yes"/"No" next-token
log-probs, AMBER's ``logits`` mode) and is scored by the project's AMBER scorer
(:func:`lpoi.eval.benchmarks.amber.score_file`, exact word matching: the vocabulary is the eight class
names). The benchmark's work list and the held-out lists (read, with their reference log-probs, and
encoded into batches) are prepared once per grid and shared by every model. A finished cell writes
``done.json`` last -- a pure function of the inputs, its wall times go to :func:`run_grid`'s ``timings``;
a re-run (same fingerprint, see the stage) keeps finished cells and redoes unfinished ones from scratch.
"""

from __future__ import annotations

import functools
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lpoi.config import Params, TrainParams, WorldEvalParams
from lpoi.io import atomic_write_json, read_json, read_jsonl

__all__ = ["GridPaths", "HeldOut", "bench_items", "cell_name", "evaluate_model", "heldout_rewards", "load_heldout",
           "run_grid", "train_cell"]


@dataclass(frozen=True)
class GridPaths:
    world_dir: Path  # world_data's output: bench/amber, test/images
    lists_dir: Path  # world_lists' output: pairs/lists, test/lists
    base_model: str  # the pretrain stage's folder
    out_dir: Path

    @property
    def bench_dir(self) -> Path:
        return self.world_dir / "bench" / "amber"

    @property
    def bench_images(self) -> Path:
        return self.world_dir / "test" / "images"

    def lists(self, split: str) -> Path:
        return self.lists_dir / split / "lists" / "lists.jsonl"

    def reference(self, split: str) -> Path:
        return self.out_dir / "reference" / f"{split}.jsonl"


MAX_LENGTH = 512  # tokens per sequence; the world's captions and image tokens stay far below it (no truncation)


def cell_name(method: str, seed: int) -> str:
    return f"{method}-s{seed}"


def train_cell(cfg: TrainParams, model_name: str, lists_path: Path, reference_path: Path, out_dir: Path) -> dict:
    """LoRA preference training of one grid cell: the project's training recipe, called in one place (no
    checkpoints, no dvclive folder: a killed cell restarts from scratch, see :func:`_run_cell`)."""
    from lpoi.config import ModelParams, ReferenceParams
    from lpoi.train.recipe import TrainPaths, train

    cfg = cfg.model_copy(update={"save_steps": 0, "merge": False})
    paths = TrainPaths(lists=Path(lists_path), reference=Path(reference_path), out=Path(out_dir))
    return train(cfg, ModelParams(name=model_name), ReferenceParams(max_length=MAX_LENGTH), paths, progress=False)


def bench_items(paths: GridPaths) -> list[dict]:
    """The benchmark's generation work list (every model of the grid answers the same one)."""
    from lpoi.eval.benchmarks import amber

    return amber.generation_items(paths.bench_dir, paths.bench_images)


def evaluate_model(model, processor, items: list[dict], paths: GridPaths, ev: WorldEvalParams,
                   out_dir: Path) -> dict:
    """Answers of the benchmark's ``items`` (:func:`bench_items`; ``out_dir/answers.jsonl``) and their AMBER
    scores (``out_dir/amber.json``)."""
    from lpoi.eval.benchmarks.amber import score_file
    from lpoi.eval.generate import generate_answers

    generate_answers(model, processor, items, out_dir / "answers.jsonl", batch_size=ev.batch_size,
                     max_new_tokens=ev.max_new_tokens, yes_no="logits", progress=False)
    return score_file(out_dir / "answers.jsonl", paths.bench_dir, out_dir / "amber.json", similarity="exact")


@dataclass(frozen=True)
class HeldOut:
    """The held-out lists every trained model is scored on, read and encoded once (:func:`load_heldout`)."""

    visibility: list[float]  # of the first list's images (every list has the same)
    k: int
    batches: list  # lpoi.train.collate.SequenceBatch per batch of samples, in order
    reference_list: torch.Tensor  # (n, K)
    reference_rejected: torch.Tensor  # (n,)

    @property
    def n(self) -> int:
        return len(self.reference_rejected)


def load_heldout(processor, lists_path: Path, reference_path: Path, model_name: str, limit: int,
                 batch_size: int = 8) -> HeldOut:
    """The first ``limit`` lists of ``lists_path``, their reference log-probs and their encoded batches."""
    from lpoi.train.collate import collate_samples
    from lpoi.train.data import load_lists
    from lpoi.train.reference import load_reference

    samples = load_lists(lists_path)[:limit]
    ref_list, ref_rej, _ = load_reference(reference_path, samples, model_name=model_name, max_length=MAX_LENGTH)
    k = samples[0].k
    batches = [collate_samples(processor, samples[s:s + batch_size], columns=tuple(range(k)), max_length=MAX_LENGTH)
               for s in range(0, len(samples), batch_size)]
    vis = next(iter(read_jsonl(lists_path)))["visibility"]
    return HeldOut(visibility=vis, k=k, batches=batches, reference_list=ref_list, reference_rejected=ref_rej)


def heldout_rewards(model, heldout: HeldOut, beta: float) -> dict:
    """Mean list-position rewards ``beta * (log pi - log pi_ref)`` of the chosen answer on held-out lists.

    Returns ``{"visibility": [...], "reward": [K means], "rejected": mean, "reward_accuracy": share of
    samples whose chosen answer out-rewards the rejected one on the original image, "ranking_accuracy":
    share of adjacent (k, k+1) pairs with reward_k > reward_k+1, "n": samples}``
    (:func:`lpoi.train.losses.reward_stats`, as training logs them).
    """
    from lpoi.train.logprobs import sequence_logps
    from lpoi.train.losses import reward_stats

    k = heldout.k
    device = next(model.parameters()).device
    pol = []
    with torch.no_grad():
        for batch in heldout.batches:
            pol.append(sequence_logps(model, batch.to(device)).view(-1, k + 1).cpu())
    pol = torch.cat(pol)
    r = reward_stats(pol[:, :k], pol[:, k], heldout.reference_list, heldout.reference_rejected, beta)
    rewards = r["rewards"]
    return {"visibility": heldout.visibility, "reward": rewards.mean(0).tolist(),
            "rejected": float(r["rewards_rejected"].mean()), "reward_accuracy": float(r["reward_accuracy"]),
            "ranking_accuracy": float(r.get("ranking_accuracy", float("nan"))), "n": heldout.n}


def _references(p: Params, paths: GridPaths) -> None:
    from lpoi.train.reference import run_reference

    for split in ("pairs", "test"):
        run_reference(paths.lists(split), paths.reference(split), model_name=paths.base_model,
                      micro_batch_sequences=p.world.train.micro_batch_sequences, max_length=MAX_LENGTH,
                      device="cpu", progress=False)


def _run_base(p: Params, paths: GridPaths, items: list[dict]) -> dict:
    from lpoi.eval.generate import load_for_generation

    out = paths.out_dir / "base"
    if (out / "done.json").exists():
        return read_json(out / "done.json")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    model, processor = load_for_generation(paths.base_model, device="cpu")
    result = {"cell": "base", "method": "base", "seed": None, "amber": evaluate_model(model, processor, items, paths,
                                                                                     p.world.eval, out)}
    atomic_write_json(out / "done.json", result)
    return result


def _run_cell(p: Params, paths: GridPaths, method: str, seed: int, items: list[dict],
              heldout: Callable[[], HeldOut], timings: dict) -> dict:
    """One cell's ``done.json`` (kept when there); ``timings[cell]``: its training seconds when it ran."""
    from lpoi.eval.generate import load_for_generation

    out = paths.out_dir / "cells" / cell_name(method, seed)
    if (out / "done.json").exists():
        return read_json(out / "done.json")
    shutil.rmtree(out, ignore_errors=True)  # a cell killed half-way restarts from scratch
    out.mkdir(parents=True)
    cfg = p.world.train.model_copy(update={"method": method, "seed": seed})
    summary = train_cell(cfg, paths.base_model, paths.lists("pairs"), paths.reference("pairs"), out)
    timings[cell_name(method, seed)] = summary["seconds"]
    hist = summary["history"]
    model, processor = load_for_generation(paths.base_model, adapter_dir=out / "adapter", device="cpu")
    result = {
        "cell": cell_name(method, seed), "method": method, "seed": seed,
        "train": {"steps": summary["steps"], "loss_first10": _mean(h["loss"] for h in hist[:10]),
                  "loss_last10": _mean(h["loss"] for h in hist[-10:]), "history": hist},
        "amber": evaluate_model(model, processor, items, paths, p.world.eval, out),
        "rewards": heldout_rewards(model, heldout(), cfg.beta),
    }
    atomic_write_json(out / "done.json", result)
    return result


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def _log(message: str) -> None:
    print(message, flush=True)  # progress lines reach the DVC log as they happen


def run_grid(p: Params, paths: GridPaths, *, log=_log) -> dict:
    """Every cell of ``world.grid`` plus the base; returns ``{"base": result, "cells": [results], "timings":
    {"seconds": wall seconds of this call, "cells": {cell: training seconds} of the cells trained by it}}``."""
    from lpoi.models import load_processor

    paths.out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    _references(p, paths)
    log(f"[world_grid] reference log-probs ready ({time.perf_counter() - t0:.0f}s)")
    items = bench_items(paths)
    base = _run_base(p, paths, items)
    log(f"[world_grid] base evaluated ({time.perf_counter() - t0:.0f}s)")
    # read and encoded when the first cell needs them (not at all when every cell is finished); the processor
    # is the base model's, the one load_for_generation returns for every cell
    heldout = functools.cache(lambda: load_heldout(load_processor(paths.base_model), paths.lists("test"),
                                                   paths.reference("test"), paths.base_model,
                                                   p.world.eval.heldout_lists))
    cells, cell_seconds = [], {}
    for method in p.world.grid.methods:
        for seed in p.world.grid.seeds:
            cells.append(_run_cell(p, paths, method, seed, items, heldout, cell_seconds))
            log(f"[world_grid] {cell_name(method, seed)} done ({time.perf_counter() - t0:.0f}s)")
    return {"base": base, "cells": cells,
            "timings": {"seconds": time.perf_counter() - t0, "cells": cell_seconds}}

