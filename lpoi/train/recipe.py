"""The LoRA preference-training recipe (LPOI, mDPO, DPO): one class, read it top to bottom.

    from lpoi.config import load_params
    from lpoi.train.recipe import TrainPaths, train

    p = load_params()
    summary = train(p.train, p.model, p.reference, TrainPaths(lists="data/lists/lists.jsonl",
                    reference="data/reference/reference.jsonl", out="models/lpoi", live="metrics/train"))

The validated config objects of ``lpoi/config.py`` come in whole (``TrainParams`` documents every
knob); nothing is re-typed into keyword arguments. In the style of torchtune's
``recipes/lora_dpo_single_device.py``: :meth:`Recipe.setup` builds everything and resumes,
:meth:`Recipe.train` is the loop, :meth:`Recipe.save_checkpoint` / :meth:`Recipe.save_outputs`
write, :meth:`Recipe.cleanup` finishes. Per optimizer step:

1. this process's micro-batches come from a permutation seeded by ``seed + epoch``
   (``loader.micro_batches``): the data order is a pure function of (seed, step), so a resumed run
   needs no loader replay;
2. each micro-batch's sequences -- the chosen answer on every list image, the rejected answer on the
   original -- go through the policy in as few forwards as ``micro_batch_sequences`` allows, the
   (original, chosen) row computed once and shared by the text pair and the list;
3. the reference log-probs come from the reference stage's file (``precomputed``) or are computed
   in the step with the adapter disabled (``online``, the official way; same loss, tested); mDPO's
   random crop changes every epoch, so its column is always computed online. At step 0 the policy
   *is* the base model, so policy and reference must agree (``guards.check_reference_at_step0``);
4. ``losses.preference_loss`` gives the loss on pure tensors; a NaN/inf stops the run naming the samples.

Where things go: a new **loss term** is a pure function in ``losses.py`` wired into
``preference_loss`` (return its value under a name and add the name to ``losses.LOSS_TERMS``:
its weight key, a ``WeightsParams`` field, and its logged curve ``loss_<name>``); a new **logging key** is one line in :meth:`Recipe._metrics` (every key becomes a dvclive
curve and a row of the checkpointed history); a new **param** is a ``TrainParams`` field (plus
``conf/config.yaml``, ``params.yaml`` and the train stage's ``params`` in ``dvc.yaml``).

Distributed (``distributed.py``): ``accelerate launch --config_file conf/accelerate/{ddp,fsdp}.yaml``.
``P`` processes x batch ``b`` equal one process with batch ``P * b`` under DDP and FSDP2 (tested with
two CPU processes). Checkpoints (``checkpoint.py``) resume a killed run exactly, curves included.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lpoi.config import ModelParams, ReferenceParams, TrainParams
from lpoi.io import atomic_write_json, sha256_file
from lpoi.train.checkpoint import (
    config_fingerprint,
    latest_checkpoint,
    load_checkpoint,
    read_state,
    remove_checkpoints,
    remove_partial,
    save_checkpoint,
)
from lpoi.train.collate import CROP, SequenceBatch, Tokenization, method_columns
from lpoi.train.curves import Curves
from lpoi.train.data import load_lists, steps_per_epoch
from lpoi.train.distributed import (
    PRECISIONS,
    make_accelerator,
    place_model,
    prepare_fsdp_wrapping,
    trainable_state_dict,
)
from lpoi.train.guards import STEP0_TOLERANCE, check_finite, check_reference_at_step0
from lpoi.train.loader import micro_batches, step_loader
from lpoi.train.logprobs import SequenceLogps
from lpoi.train.lora import disable_dropout, lora_config, merge_adapter, save_adapter
from lpoi.train.losses import LOSS_TERMS, preference_loss
from lpoi.train.reference import load_reference_rows

__all__ = ["Recipe", "TrainPaths", "train"]

SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
"""``train.scheduler`` -> transformers scheduler (all with linear warmup over ``warmup_ratio``)."""


@dataclass(frozen=True)
class TrainPaths:
    """Where the recipe reads and writes (``dvc.yaml`` owns these paths; the stage passes them)."""

    lists: Path
    """The lists manifest (``lists.jsonl``)."""
    out: Path
    """``out/adapter`` (peft, safetensors), ``out/merged`` with ``train.merge``, ``out/checkpoints``."""
    reference: Path | None = None
    """The reference stage's ``reference.jsonl``; unused with ``train.reference: online``."""
    live: Path | None = None
    """dvclive folder (``metrics.json``, ``plots/metrics/*.tsv``); None: no curves."""
    checkpoints: Path | None = None
    """Default ``out/checkpoints``; removed when training ends."""

    def __post_init__(self):
        for name in ("lists", "out", "reference", "live", "checkpoints"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))


def train(cfg: TrainParams, model: ModelParams, reference: ReferenceParams, paths: TrainPaths,
          **hooks) -> dict:
    """Train a LoRA adapter; returns the summary of :meth:`Recipe.cleanup`. ``hooks``: see :class:`Recipe`."""
    return Recipe(cfg, model, reference, paths, **hooks).run()


class Recipe:
    """One training run. ``progress``: a progress bar; ``callback(step, metrics)`` after every optimizer
    step (tests use it to simulate a kill); ``keep_checkpoints``: newest checkpoints kept while training.

    Raises (from :meth:`setup` / :meth:`train`): ``ManifestError`` / ``ReferenceError`` naming the row,
    ``ReferenceMismatchError`` (step-0 check), ``NonFiniteLossError`` naming the batch's samples.
    """

    def __init__(self, cfg: TrainParams, model: ModelParams, reference: ReferenceParams, paths: TrainPaths, *,
                 progress: bool = True, callback: Callable[[int, dict], None] | None = None,
                 keep_checkpoints: int = 2):
        if cfg.reference == "precomputed" and paths.reference is None:
            raise ValueError("train.reference is 'precomputed' but no reference path was given")
        self.cfg, self.model_cfg, self.ref_cfg, self.paths = cfg, model, reference, paths
        self.progress, self.callback, self.keep = progress, callback, keep_checkpoints
        self.ckpt_root = paths.checkpoints or paths.out / "checkpoints"
        self.dtype = PRECISIONS[cfg.precision][0]

    def run(self) -> dict:
        self.setup()
        self.train()
        self.save_outputs()
        return self.cleanup()

    # ------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Accelerator, data and reference, model + LoRA + optimizer, then resume and curves."""
        from accelerate.utils import set_seed

        self.t_start = time.perf_counter()
        self.acc = make_accelerator(self.cfg)
        self.world, self.main = self.acc.num_processes, self.acc.is_main_process
        set_seed(self.cfg.seed)
        self._setup_data()
        self._setup_model()
        self._resume()
        self.curves = None
        if self.main and self.paths.live is not None:
            self.curves = Curves(self.paths.live, logging_steps=self.cfg.logging_steps,
                                 total_steps=self.total_steps, history=self.history)

    def _setup_data(self) -> None:
        cfg = self.cfg
        self.samples = load_lists(self.paths.lists, min_k=1 if cfg.method == "dpo" else 2)
        self.columns = method_columns(cfg.method, self.samples[0].k, cfg.mdpo_corruption)
        self.ref_list = self.ref_rej = self.ref_dtype = self.ref_rows = None
        if cfg.reference == "precomputed":
            self.ref_rows = load_reference_rows(self.paths.reference, self.samples, model_name=self.model_cfg.name,
                                                max_length=self.ref_cfg.max_length,
                                                max_pixels=self.model_cfg.max_pixels,
                                                tokenization=Tokenization.of(self.ref_cfg))
            self.ref_list, self.ref_rej = self.ref_rows.list, self.ref_rows.rejected
            self.ref_dtype = self.ref_rows.meta.get("dtype")
            if self.dtype != "float32" and self.main:
                warnings.warn(f"train.reference 'precomputed' in {self.dtype}: the step-0 check allows "
                              f"{STEP0_TOLERANCE[self.dtype][0]:g} nats + {STEP0_TOLERANCE[self.dtype][1]:.1%} of "
                              "|log pi_ref| for GPU kernels that round per batch shape -- about the size of the list "
                              "signal; train.reference: online cancels the reference exactly (the official way)",
                              stacklevel=3)
            if self.ref_dtype != self.dtype and self.main:
                warnings.warn(f"reference log-probs were computed in {self.ref_dtype} but training runs in "
                              f"{self.dtype}; the rewards start slightly off zero", stacklevel=3)
        self.global_batch = cfg.batch_size * self.world * cfg.grad_accum
        spe = steps_per_epoch(len(self.samples), self.global_batch)
        self.total_steps = cfg.max_steps if cfg.max_steps is not None else max(1, math.ceil(cfg.epochs * spe))

    def _setup_model(self) -> None:
        from accelerate.utils import set_seed
        from peft import get_peft_model
        from transformers import get_scheduler

        from lpoi.models import load_vlm

        cfg = self.cfg
        model, self.processor = load_vlm(self.model_cfg.name, dtype=self.dtype, max_pixels=self.model_cfg.max_pixels,
                                         trust_remote_code=self.model_cfg.trust_remote_code)
        if cfg.disable_dropout:
            disable_dropout(model)
        place_model(self.acc, model)  # FSDP2: left on the CPU, sharded onto the devices by acc.prepare
        if cfg.gradient_checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
            model.config.use_cache = False
        set_seed(cfg.seed)  # again: loading may draw random numbers (a tiny model built on first use)
        self.peft_model = get_peft_model(model, lora_config(cfg.lora))
        wrapper = SequenceLogps(self.peft_model, cfg.micro_batch_sequences)
        optimizer = torch.optim.AdamW([p for p in wrapper.parameters() if p.requires_grad], lr=cfg.lr,
                                      weight_decay=cfg.weight_decay)
        # stepped by hand once per optimizer step: accelerate's wrapper would step it once per process
        self.scheduler = get_scheduler(SCHEDULERS[cfg.scheduler], optimizer,
                                       num_warmup_steps=math.ceil(cfg.warmup_ratio * self.total_steps),
                                       num_training_steps=self.total_steps)
        prepare_fsdp_wrapping(self.acc, model)
        self.wrapper, self.optimizer = self.acc.prepare(wrapper, optimizer)
        self.params = [p for p in self.wrapper.parameters() if p.requires_grad]  # FSDP2 swaps in DTensors

    def _fingerprint(self) -> str:
        """What a checkpoint must match to be resumed: the config objects in full, the inputs, the world."""
        ref = self.paths.reference if self.cfg.reference == "precomputed" else None
        return config_fingerprint({
            "train": self.cfg.model_dump(mode="json"),
            "model": self.model_cfg.model_dump(mode="json"),
            "reference": self.ref_cfg.model_dump(mode="json"),
            "lists_sha256": sha256_file(self.paths.lists),
            "reference_sha256": sha256_file(ref) if ref else None,
            "world": self.world,
        })

    def _resume(self) -> None:
        self.fingerprint, self.start_step, self.history = self._fingerprint(), 0, []
        latest = latest_checkpoint(self.ckpt_root)
        if latest is not None:
            state = read_state(latest[1])
            if state.get("fingerprint") == self.fingerprint:
                self.history = load_checkpoint(latest[1], accelerator=self.acc, model=self.wrapper,
                                               optimizer=self.optimizer, scheduler=self.scheduler)
                self.start_step = int(state["step"])
                if self.main:
                    print(f"[train] resuming from {latest[1]} (step {self.start_step}/{self.total_steps})",
                          flush=True)
            elif self.main:
                warnings.warn(f"checkpoints in {self.ckpt_root} come from a different configuration; "
                              "starting afresh", stacklevel=3)
                remove_checkpoints(self.ckpt_root)
        self.acc.wait_for_everyone()
        if self.main:
            remove_partial(self.ckpt_root)

    # ------------------------------------------------------------------------------------------ the loop

    def train(self) -> None:
        cfg = self.cfg
        batches = micro_batches(self.start_step, self.total_steps, n=len(self.samples),
                                batch_size=cfg.batch_size, grad_accum=cfg.grad_accum, world=self.world,
                                rank=self.acc.process_index, seed=cfg.seed)
        loader = iter(step_loader(self.processor, self.samples, self.columns, batches=batches,
                                  tokenization=Tokenization.of(self.ref_cfg), seed=cfg.seed,
                                  num_workers=cfg.num_workers))
        self.n_truncated = 0
        bar = self._progress_bar()
        self.wrapper.train()
        for step in range(self.start_step, self.total_steps):
            sums, grad_norm = self._step(step, loader)
            row = {"step": step + 1, **self._metrics(sums, grad_norm)}
            self.history.append(row)
            if self.curves is not None:
                self.curves.log(row)
            if cfg.save_steps and (step + 1) % cfg.save_steps == 0 and step + 1 < self.total_steps:
                self.save_checkpoint(step + 1)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
            if self.callback is not None:
                self.callback(step + 1, row)
        if bar is not None:
            bar.close()

    def _step(self, step: int, loader) -> tuple[dict[str, float], Tensor | None]:
        """One optimizer step over ``grad_accum`` micro-batches; returns the summed diagnostics, grad norm."""
        acc, sums = self.acc, {}
        for _ in range(self.cfg.grad_accum):
            idx, batch = next(loader)
            if self.ref_rows is not None:  # every row, every step: the step-0 check sees only the first batch
                self.ref_rows.check_batch(batch, idx, self.columns)
            batch = batch.to(acc.device)
            self.n_truncated += batch.n_truncated
            # no gradient all-reduce until the last micro-step; the loss is scaled by 1/grad_accum in backward
            with acc.accumulate(self.wrapper):
                out = self._loss(step, idx, batch)
                acc.backward(out["loss"])
            _accumulate(sums, out, self.columns)
        assert acc.sync_gradients, "micro-steps out of step with accelerate's accumulation counter"
        clip = self.cfg.max_grad_norm
        grad_norm = acc.clip_grad_norm_(self.params, clip) if clip > 0 else None
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return sums, grad_norm

    def _loss(self, step: int, idx: list[int], batch: SequenceBatch) -> dict[str, Tensor]:
        cfg, n = self.cfg, len(self.columns)
        ids = [self.samples[i].id for i in idx]
        policy = self.wrapper(batch.inputs, batch.response_mask, offsets=batch.offsets).view(len(idx), n + 1)
        ref = self._reference_logps(batch, idx)
        if step == 0:  # LoRA is still the identity: policy == base model
            check_reference_at_step0(policy, ref, ids=ids, columns=self.columns, dtype=self.dtype,
                                     reference_dtype=self.ref_dtype, accelerator=self.acc,
                                     online=self.ref_list is None)
        out = preference_loss(cfg.method, policy_list_logps=policy[:, :n], policy_rejected_logps=policy[:, n],
                              reference_list_logps=ref[:, :n], reference_rejected_logps=ref[:, n],
                              beta=cfg.beta, weights=cfg.weights.model_dump(), delta=cfg.delta)
        check_finite(out["loss"], policy, ids, step, self.acc)
        return out

    def _reference_logps(self, batch: SequenceBatch, idx: list[int]) -> Tensor:
        """Reference log-probs ``(B, C + 1)``: from the file, or online with the adapter off (crop: always)."""
        b, c1 = len(idx), len(self.columns) + 1
        if self.ref_list is None:
            return self._online(batch).view(b, c1)
        ref = torch.empty(b, c1, dtype=torch.float64)
        for j, col in enumerate(self.columns):
            if col != CROP:
                ref[:, j] = self.ref_list[idx, int(col)]
        ref[:, -1] = self.ref_rej[idx]
        ref = ref.to(self.acc.device)
        online = [r * c1 + j for r in range(b) for j, col in enumerate(self.columns) if col == CROP]
        if not online:
            return ref
        flat = ref.view(-1).clone()
        flat[online] = self._online(batch.select(online))
        return flat.view(b, c1)

    def _online(self, batch: SequenceBatch) -> Tensor:
        """The frozen base model's log-probs through the prepared module (autocast, DDP, FSDP as the policy)."""
        with torch.no_grad():
            return self.wrapper(batch.inputs, batch.response_mask, reference=True, offsets=batch.offsets)

    def _metrics(self, sums: dict[str, float], grad_norm: Tensor | None) -> dict[str, float]:
        """One optimizer step's logged values, averaged over micro-steps and processes."""
        names = sorted(sums)
        vec = torch.tensor([sums[k] / self.cfg.grad_accum for k in names], device=self.acc.device)
        if self.world > 1:
            vec = self.acc.reduce(vec, reduction="mean")
        metrics = dict(zip(names, vec.tolist()))
        metrics["lr"] = self.scheduler.get_last_lr()[0]
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        # throughput is not a result: it stays out of the curves (deterministic files a fresh clone
        # reproduces byte for byte); the stage writes the run's timings beside the metrics instead
        return metrics

    def _progress_bar(self):
        if not (self.progress and self.main):
            return None
        from tqdm.auto import tqdm

        return tqdm(total=self.total_steps, initial=self.start_step, desc="train", unit="step")

    # ------------------------------------------------------------------------------------------ writing

    def save_checkpoint(self, step: int) -> None:
        """``ckpt_root/step-N``: LoRA weights + AdamW state (sharded), scheduler, RNG, the history 1..N."""
        save_checkpoint(self.ckpt_root, step, accelerator=self.acc, model=self.wrapper,
                        optimizer=self.optimizer, scheduler=self.scheduler, keep=self.keep,
                        history=self.history,
                        state={"step": step, "fingerprint": self.fingerprint,
                               "config": self.cfg.model_dump(mode="json")})

    def save_outputs(self) -> None:
        """``out/adapter`` (byte-deterministic), and ``out/merged`` (float32) with ``train.merge``."""
        self.acc.wait_for_everyone()
        peft_model = self.acc.unwrap_model(self.wrapper).model
        lora = trainable_state_dict(peft_model)  # every process: gathers FSDP shards
        self.adapter_dir = self.paths.out / "adapter"
        self.merged_dir = self.paths.out / "merged" if self.cfg.merge else None
        if self.main:
            save_adapter(peft_model, lora, self.adapter_dir, base_name=self.model_cfg.name)
            if self.merged_dir is not None:
                merge_adapter(self.model_cfg, self.adapter_dir, self.merged_dir)
        self.acc.wait_for_everyone()

    def cleanup(self) -> dict:
        """Remove the checkpoints, close the curves; returns the run's summary:

        ``{"steps", "resumed_from", "final": {metric: value}, "history": [rows of this call],
        "adapter_dir", "merged_dir", "seconds", "samples_per_s", "n_truncated", "global_batch"}``.
        """
        seconds = time.perf_counter() - self.t_start
        steps_run = self.total_steps - self.start_step
        rate = steps_run * self.global_batch / seconds if seconds else 0.0
        run_history = self.history[self.start_step:]  # the rows of this call (a resumed run's history has them all)
        if self.main:
            remove_checkpoints(self.ckpt_root)
            if self.curves is not None:
                self.curves.end({"n_truncated": self.n_truncated})
        self.acc.wait_for_everyone()
        return {
            "steps": self.total_steps,
            "resumed_from": self.start_step,
            "final": run_history[-1] if run_history else {},
            "history": run_history,
            "adapter_dir": str(self.adapter_dir),
            "merged_dir": str(self.merged_dir) if self.merged_dir else None,
            "seconds": seconds,
            "samples_per_s": rate,
            "n_truncated": self.n_truncated,
            "global_batch": self.global_batch,
        }


def _accumulate(sums: dict[str, float], out: dict[str, Tensor], columns) -> None:
    """Add one micro-batch's loss terms and reward diagnostics to ``sums`` (the logged names)."""

    def add(name, value):
        sums[name] = sums.get(name, 0.0) + float(value)

    add("loss", out["loss"].detach())
    for term in LOSS_TERMS:
        if term in out:
            add(f"loss_{term}", out[term].detach())
    for col, v in zip(columns, out["rewards"].mean(0).tolist()):
        add(f"reward_{col}", v)
    add("reward_rejected", out["rewards_rejected"].mean())
    add("margin", out["margin"])
    add("reward_accuracy", out["reward_accuracy"])
    if "ranking_accuracy" in out:
        add("ranking_accuracy", out["ranking_accuracy"])


def main(argv: list[str] | None = None) -> None:
    """``python -m lpoi.train.recipe JOB.json``: one run from a job file (``accelerate launch``, ``torchrun``).

    JOB.json: ``{"train": {...}, "model": {...}, "reference": {...}, "paths": {"lists", "out", ...}}`` --
    sections validated like ``params.yaml`` (missing keys take their defaults)."""
    import argparse
    import os

    from lpoi.config import validate

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("job", help="JSON job file (see above)")
    ap.add_argument("--summary", help="write the returned summary here (main process)")
    args = ap.parse_args(argv)
    job = json.loads(Path(args.job).read_text())
    p = validate({k: job[k] for k in ("train", "model", "reference") if k in job})
    summary = train(p.train, p.model, p.reference, TrainPaths(**job["paths"]), progress=False)
    if args.summary and int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(args.summary, summary)


if __name__ == "__main__":
    main()
