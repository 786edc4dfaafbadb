"""The ``pretrain`` stage: a base VLM that can see the shapes world but still hallucinates.

The analogue of an instruction-tuned VLM, trained from scratch (all weights, no LoRA) on the
``pretrain`` split: per scene its caption ("Describe this image." -> "A red circle and a ...") and two
existence questions ("Is there a {class}" -> "Yes" for a present class, "No" for a uniformly drawn
absent one). Sequences are built by the training code of the pipeline
(:func:`lpoi.train.collate.encode_sequences`: same chat template, answer boundary and end-of-turn), so
the base model is trained on exactly the token layout the preference stages score.

Loss = mean over sequences of the mean answer-token NLL, plus ``dense_weight`` x a **patch-label
loss**: the LM head at each image token predicts the class name of the object covering most of that
patch (``"."`` for background), cross-entropy over image tokens. It is dense supervision for the
vision tower (36 labels per image instead of one answer) and aligns image tokens with the class words;
without it the ViT learnt no shape in the pilot runs' budget. It only shapes outputs at image positions,
which no later stage reads.

Why it still hallucinates: absent classes in the "No" questions are drawn uniformly, so an absent
*partner* is rarely asked about, and partners share colours -- after ``steps`` steps the model answers
by colour and co-occurrence for partners (pilot: 0.99 accuracy on present objects, ~0.07 on absent
partners, CHAIR ~12 % on captions). The numbers of a run are in ``metrics/world_pretrain.json`` and the
benchmark of the ``world_grid`` stage.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lpoi.config import WorldParams
from lpoi.io import atomic_write_json, load_image, read_jsonl
from lpoi.world.dataset import DESCRIBE, existence_question
from lpoi.world.model import BACKGROUND_TOKEN, build_untrained
from lpoi.world.scenes import CLASSES, rle_decode

__all__ = ["Example", "base_seed", "patch_labels", "pretrain_bases", "pretrain_examples", "run_pretrain"]


@dataclass(frozen=True)
class Example:
    question: str
    answer: str
    image: object  # PIL image
    patches: torch.Tensor  # (grid * grid,) token ids


def patch_labels(objects: list[dict], canvas: int, grid: int, class_ids: dict[str, int], background_id: int,
                 min_share: float = 0.2) -> torch.Tensor:
    """Row-major ``(grid*grid,)`` labels: the class of the object with the most visible pixels in the patch
    when they cover more than ``min_share`` of it, else the background token."""
    edges = np.linspace(0, canvas, grid + 1).round().astype(int)
    masks = [(o["class"], rle_decode(o["mask"])) for o in objects]
    out = np.full((grid, grid), background_id, dtype=np.int64)
    for r in range(grid):
        for c in range(grid):
            cell = (slice(edges[r], edges[r + 1]), slice(edges[c], edges[c + 1]))
            area = (edges[r + 1] - edges[r]) * (edges[c + 1] - edges[c])
            counts = [(int(m[cell].sum()), cls) for cls, m in masks]
            best = max(counts, default=(0, None))
            if best[0] > min_share * area:
                out[r, c] = class_ids[best[1]]
    return torch.from_numpy(out.reshape(-1))


def pretrain_examples(rows: list[dict], images: list, patches: list[torch.Tensor], seed: int) -> list[Example]:
    """Caption + one "Yes" and one "No" existence question per scene, shuffled with ``seed``."""
    rng = random.Random(f"lpoi-world-pretrain:{seed}")
    out = []
    for row, image, p in zip(rows, images, patches):
        present = [o["class"] for o in row["objects"]]
        absent = [c for c in CLASSES if c not in present]
        out.append(Example(DESCRIBE, row["caption"], image, p))
        out.append(Example(existence_question(rng.choice(present)), "Yes", image, p))
        if absent:
            out.append(Example(existence_question(rng.choice(absent)), "No", image, p))
    rng.shuffle(out)
    return out


def _load_split(world: WorldParams, split_dir: Path, processor) -> tuple[list[dict], list, list[torch.Tensor]]:
    tok = processor.tokenizer
    class_ids = {c: tok.convert_tokens_to_ids("Ġ" + c) for c in CLASSES}
    background_id = tok.convert_tokens_to_ids(BACKGROUND_TOKEN)
    grid = world.model.image_size // world.model.patch_size
    rows = list(read_jsonl(split_dir / "scenes.jsonl"))
    images = [load_image(split_dir / r["image"]) for r in rows]
    patches = [patch_labels(r["objects"], world.canvas, grid, class_ids, background_id) for r in rows]
    return rows, images, patches


def _losses(model, batch, patches: torch.Tensor, image_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(answer loss, patch-label loss) of one encoded batch."""
    logits = model(**batch.inputs, use_cache=False).logits.float()
    ids, resp = batch.inputs["input_ids"], batch.response_mask
    logp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    m = resp[:, 1:].float()
    answer = -((logp * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    at_image = ids == image_token_id
    if int(at_image.sum()) != patches.numel():
        raise RuntimeError(f"{int(at_image.sum())} image tokens for {patches.numel()} patch labels")
    dense = torch.nn.functional.cross_entropy(logits[at_image], patches.reshape(-1))
    return answer, dense


def base_seed(world: WorldParams, base: int) -> int:
    """Base ``base`` of the study is ``world.pretrain`` with this seed (weight init and example order)."""
    return world.pretrain.seed + base


def run_pretrain(world: WorldParams, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                 progress: bool = True, base: int = 0) -> dict:
    """Train base ``base`` (:func:`base_seed`) on ``data_dir/pretrain`` and save it (safetensors + processor, and
    the per-step losses as ``pretrain_history.json``) to ``out_dir``; returns the run's numbers (history too)."""
    from transformers import get_scheduler

    from lpoi.train.collate import encode_sequences

    cfg = world.pretrain.model_copy(update={"seed": base_seed(world, base)})
    t0 = time.perf_counter()
    model, processor = build_untrained(world.model, seed=cfg.seed)
    rows, images, patches = _load_split(world, Path(data_dir) / "pretrain", processor)
    examples = pretrain_examples(rows, images, patches, cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_scheduler("cosine", opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.steps)
    image_token_id = model.config.image_token_id
    history = []
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.steps, desc="pretrain", unit="step")
    model.train()
    for step in range(cfg.steps):
        batch_ex = [examples[(step * cfg.batch_size + j) % len(examples)] for j in range(cfg.batch_size)]
        batch = encode_sequences(processor, questions=[e.question for e in batch_ex],
                                 answers=[e.answer for e in batch_ex], images=[e.image for e in batch_ex],
                                 sample_ids=[f"step{step}:{j}" for j in range(len(batch_ex))])
        answer, dense = _losses(model, batch, torch.stack([e.patches for e in batch_ex]), image_token_id)
        loss = answer + cfg.dense_weight * dense
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"pretrain: non-finite loss at step {step + 1}; lower world.pretrain.lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        history.append({"step": step + 1, "answer_loss": answer.item(), "patch_loss": dense.item()})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(answer=f"{answer.item():.3f}", patch=f"{dense.item():.3f}")
    if bar is not None:
        bar.close()
    _save(model.eval(), processor, Path(out_dir), {"world_model": world.model.model_dump(),
                                                   "pretrain": cfg.model_dump(), "steps": cfg.steps}, history)
    tail = history[-min(50, len(history)):]
    return {
        "steps": cfg.steps, "examples": len(examples), "scenes": len(rows),
        "parameters": sum(p.numel() for p in model.parameters()),
        "answer_loss_first50": float(np.mean([h["answer_loss"] for h in history[:50]])),
        "answer_loss_last50": float(np.mean([h["answer_loss"] for h in tail])),
        "patch_loss_last50": float(np.mean([h["patch_loss"] for h in tail])),
        "seconds": time.perf_counter() - t0, "history": history,
    }


def _save(model, processor, out_dir: Path, meta: dict, history: list[dict]) -> None:
    """save_pretrained into a temp folder renamed at the end: a killed run leaves no half model. The folder
    stays a pure function of its inputs (the loss curve is; the wall time is not)."""
    tmp = out_dir.parent / f".{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    atomic_write_json(tmp / "lpoi_world.json", meta)
    atomic_write_json(tmp / "pretrain_history.json", history)
    shutil.rmtree(out_dir, ignore_errors=True)
    os.replace(tmp, out_dir)


def _pretrain_task(world: WorldParams, data_dir: str, out_dir: str, base: int) -> dict:
    stats = run_pretrain(world, data_dir, out_dir, progress=False, base=base)
    stats.pop("history")  # in the model folder (pretrain_history.json)
    stats.pop("seconds")  # not a function of the inputs
    return stats


def pretrain_bases(world: WorldParams, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *, workers: int,
                   log=print) -> dict:
    """``out_dir/base-<i>`` for every base of ``world.study.bases``, each in its own process with ``world.threads``
    threads (the bases do not depend on it); returns ``{"base-<i>": numbers}``. All bases start at once even when
    there are more than ``workers``: they take equally long, so 3 processes on 2 cores end together after ~1.5
    base-times, where 2 + 1 would take 2."""
    from lpoi.world.pool import Progress, Task, run_tasks

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [Task(f"base-{i}", _pretrain_task, (world, str(data_dir), str(out / f"base-{i}"), i))
             for i in range(world.study.bases)]
    done = run_tasks(tasks, workers=max(workers, len(tasks)), threads=world.threads,
                     progress=Progress(total=len(tasks), label="pretrain", log=log), phase="bases")
    return {name: done[name] for name in sorted(done)}
