"""LoRA preference training (LPOI, mDPO, DPO) in one plain accelerate loop.

One readable recipe in the torchtune style -- no trainer subclass whose private hooks change every
release (mDPO's TRL overrides silently stopped being called). Per optimizer step:

1. the step's samples come from a permutation of the manifest seeded by ``seed + epoch``
   (``data.step_sample_indices``), split over processes and micro-steps -- so the data order is a
   pure function of (seed, step) and a resumed run needs no loader replay;
2. each micro-batch's sequences -- the chosen answer on every list image, the rejected answer on the
   original -- go through the policy in as few forwards as ``micro_batch_sequences`` allows, the
   (original, chosen) row computed once and shared by the text pair and the list;
3. the reference log-probs come from the reference stage's file (``reference="precomputed"``) or are
   computed in the step with the adapter disabled (``"online"``, the official way; both give the same
   loss, tested); mDPO's random crop changes every epoch, so its reference is always computed online;
4. ``losses.preference_loss`` gives the loss; a NaN/inf stops the run naming the batch's samples.

Distributed through accelerate (``accelerate launch``): DDP averages gradients over processes, so
``P`` processes x batch ``b`` equal one process with batch ``P*b`` (tested with two CPU processes).
Checkpoints (adapter, optimizer, scheduler, RNG states, step) are written atomically every
``save_steps`` optimizer steps; re-running the same configuration resumes from the newest and
reproduces the uninterrupted loss curve (tested). Metrics go to dvclive, one row per optimizer step.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from lpoi.io import atomic_write_json, sha256_file
from lpoi.train.collate import CROP, SequenceBatch, collate_samples, method_columns
from lpoi.train.data import ListSample, load_lists, step_sample_indices, steps_per_epoch
from lpoi.train.logprobs import SequenceLogps
from lpoi.train.losses import METHODS, preference_loss
from lpoi.train.reference import load_reference

__all__ = [
    "LORA_DEFAULTS",
    "PRECISIONS",
    "SCHEDULERS",
    "VISION_MODULES",
    "NonFiniteLossError",
    "lora_config",
    "merge_adapter",
    "train",
]

PRECISIONS = {"fp32": ("float32", "no"), "bf16": ("bfloat16", "bf16"), "fp16": ("float16", "fp16")}
"""``train.precision`` -> (weights dtype, accelerate mixed precision). LoRA weights stay float32."""

SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
"""``train.scheduler`` -> transformers scheduler (all with linear warmup over ``warmup_ratio``)."""

VISION_MODULES = (
    "vision_model",
    "connector",
    "vision_tower",
    "multi_modal_projector",
    "visual",
    "mm_projector",
)
"""Module names of the image side: Idefics2 ``vision_model`` + ``connector`` (perceiver), LLaVA
``vision_tower`` + ``multi_modal_projector``, Qwen-VL ``visual``, LLaVA-original ``mm_projector``."""

LORA_DEFAULTS = {
    "r": 8,
    "alpha": 8,
    "dropout": 0.05,
    "target_modules": "all-linear",
    "exclude_vision_tower": False,
}
"""The paper's LoRA (r 8, alpha 8, all linear layers); dropout as in the official configs."""

CHECKPOINT_RE = re.compile(r"^step-(\d+)$")


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or inf; the message names the batch's sample ids."""


def lora_config(
    *,
    r: int = 8,
    alpha: float = 8,
    dropout: float = 0.05,
    target_modules: str | list[str] = "all-linear",
    exclude_vision_tower: bool = False,
):
    """A peft ``LoraConfig``; ``exclude_vision_tower`` keeps the image encoder and projector frozen.

    ``all-linear`` (the paper) adapts every linear layer except the LM head, image side included;
    the exclusion is a regex over ``VISION_MODULES`` (peft's ``exclude_modules``).
    """
    from peft import LoraConfig

    if r < 1:
        raise ValueError(f"lora.r must be >= 1, got {r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"lora.dropout must be in [0, 1), got {dropout}")
    exclude = None
    if exclude_vision_tower:
        exclude = r".*\b(" + "|".join(VISION_MODULES) + r")\..*"
    return LoraConfig(
        r=int(r),
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=target_modules,
        exclude_modules=exclude,
        bias="none",
    )


# ---------------------------------------------------------------------------------------------- data


class _StepCollator:
    """DataLoader collate: ``[(epoch, index), ...]`` -> (indices, SequenceBatch). Picklable for workers."""

    def __init__(self, processor, samples: Sequence[ListSample], columns, max_length, seed):
        self.processor, self.samples, self.columns = processor, samples, columns
        self.max_length, self.seed = max_length, seed

    def __call__(self, items):
        epochs = {e for e, _ in items}
        idx = [i for _, i in items]
        batch = collate_samples(
            self.processor,
            [self.samples[i] for i in idx],
            columns=self.columns,
            max_length=self.max_length,
            crop_key=f"{self.seed}:{min(epochs)}",
        )
        return idx, batch


class _Items(torch.utils.data.Dataset):
    def __getitem__(self, item):
        return item

    def __len__(self):  # pragma: no cover - only the batch sampler indexes it
        return 0


def _micro_batches(
    start_step: int,
    total_steps: int,
    *,
    n: int,
    batch_size: int,
    grad_accum: int,
    world: int,
    rank: int,
    seed: int,
) -> list[list[tuple[int, int]]]:
    """This process's micro-batches, in order, for steps ``start_step..total_steps-1``."""
    g = batch_size * world * grad_accum
    spe = steps_per_epoch(n, g)
    out = []
    for step in range(start_step, total_steps):
        idx = step_sample_indices(step, n_samples=n, global_batch=g, seed=seed)
        epoch = step // spe
        for a in range(grad_accum):
            lo = (a * world + rank) * batch_size
            out.append([(epoch, i) for i in idx[lo : lo + batch_size]])
    return out


# ---------------------------------------------------------------------------------------------- checkpoints


def _fingerprint(cfg: Mapping) -> str:
    return hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _latest_checkpoint(root: Path) -> tuple[int, Path] | None:
    if not root.is_dir():
        return None
    found = []
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and (p / "trainer_state.json").is_file():
            found.append((int(m.group(1)), p))
    return max(found) if found else None


def _rng_state() -> dict:
    import numpy as np

    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    import numpy as np

    torch.set_rng_state(state["torch"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    a = state["numpy"]
    np.random.set_state((a[0], np.array(a[1], dtype=np.uint32), a[2], a[3], a[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_checkpoint(
    root: Path, step: int, *, accelerator, peft_model, optimizer, scheduler, state: dict, keep: int
) -> None:
    """Write ``root/step-N`` atomically: everything goes to a temp folder renamed at the end."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    tmp = root / f".tmp-step-{step}"
    final = root / f"step-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), tmp / f"rng_rank{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        sd = {k: v.detach().cpu().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
        save_file(sd, tmp / "adapter.safetensors")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        if accelerator.scaler is not None:
            torch.save(accelerator.scaler.state_dict(), tmp / "scaler.pt")
        atomic_write_json(tmp / "trainer_state.json", state)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        older = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)))
        for _, p in older[:-keep] if keep > 0 else []:
            shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(path: Path, *, accelerator, peft_model, optimizer, scheduler) -> dict:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    sd = load_file(path / "adapter.safetensors", device=str(accelerator.device))
    set_peft_model_state_dict(peft_model, sd)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    if accelerator.scaler is not None and (path / "scaler.pt").exists():
        accelerator.scaler.load_state_dict(torch.load(path / "scaler.pt", weights_only=True))
    _set_rng_state(torch.load(path / f"rng_rank{accelerator.process_index}.pt", weights_only=True))
    return json.loads((path / "trainer_state.json").read_text())


def _truncate_live(live_dir: Path, last_step: int) -> None:
    """Drop dvclive rows logged after the checkpoint we resume from, so the curve has no duplicates."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines(keepends=True)
        if not lines:
            continue
        head = lines[0].rstrip("\n").split("\t")
        col = head.index("step") if "step" in head else None
        if col is None:
            continue
        kept = [lines[0]] + [ln for ln in lines[1:] if ln.strip() and int(ln.split("\t")[col]) <= last_step]
        tsv.write_text("".join(kept))


# ---------------------------------------------------------------------------------------------- the loop


def _validate(p: Mapping) -> None:
    """Check ``train()``'s arguments (``p`` = its locals); messages name the ``train.*`` param."""
    choices = {
        "method": METHODS,
        "reference": ("precomputed", "online"),
        "scheduler": tuple(SCHEDULERS),
        "precision": tuple(PRECISIONS),
        "mdpo_corruption": ("hidden", "crop"),
    }
    for name, allowed in choices.items():
        if p[name] not in allowed:
            raise ValueError(f"train.{name} must be one of {list(allowed)}, got {p[name]!r}")
    for name in ("lr", "beta"):
        if not p[name] > 0:  # also rejects NaN
            raise ValueError(f"train.{name} must be > 0, got {p[name]}")
    if p["max_steps"] is None and not p["epochs"] > 0:
        raise ValueError(f"train.epochs must be > 0, got {p['epochs']}")
    if p["max_steps"] is not None and p["max_steps"] < 1:
        raise ValueError(f"train.max_steps must be >= 1 or null, got {p['max_steps']}")
    for name in ("batch_size", "grad_accum", "logging_steps"):
        if int(p[name]) < 1:
            raise ValueError(f"train.{name} must be >= 1, got {p[name]}")
    if not 0 <= p["warmup_ratio"] < 1:
        raise ValueError(f"train.warmup_ratio must be in [0, 1), got {p['warmup_ratio']}")
    if p["save_steps"] < 0:
        raise ValueError(f"train.save_steps must be >= 0, got {p['save_steps']}")


def train(
    *,
    lists_path: str | Path,
    reference_path: str | Path | None,
    out_dir: str | Path,
    model_name: str,
    method: str = "lpoi",
    beta: float = 0.1,
    weights: Mapping[str, float] | None = None,
    delta: float = 0.0,
    reference: str = "precomputed",
    lr: float = 5e-6,
    epochs: float = 1,
    max_steps: int | None = None,
    batch_size: int = 1,
    grad_accum: int = 1,
    warmup_ratio: float = 0.0,
    scheduler: str = "cosine",
    precision: str = "fp32",
    gradient_checkpointing: bool = False,
    micro_batch_sequences: int | None = None,
    max_length: int | None = None,
    lora: Mapping | None = None,
    seed: int = 0,
    save_steps: int = 50,
    merge: bool = False,
    mdpo_corruption: str = "hidden",
    live_dir: str | Path | None = None,
    logging_steps: int = 1,
    max_grad_norm: float = 1.0,
    weight_decay: float = 0.0,
    num_workers: int = 0,
    checkpoint_dir: str | Path | None = None,
    keep_checkpoints: int = 2,
    progress: bool = True,
    callback: Callable[[int, dict], None] | None = None,
    max_pixels: int | None = None,
) -> dict:
    """Train a LoRA adapter with ``method`` on the lists manifest; returns a summary.

    Args (``train.*`` params unless noted):
        lists_path, reference_path, out_dir: stage paths (``reference_path`` may be None when
            ``reference="online"``). The adapter goes to ``out_dir/adapter`` (peft, safetensors),
            merged weights + processor to ``out_dir/merged`` when ``merge``.
        model_name: the base model (``model.name``); must be the one the reference file was made with.
        method: ``lpoi`` | ``mdpo`` | ``dpo``; beta, weights, delta: see ``losses.preference_loss``.
        reference: ``precomputed`` (the reference stage's file) | ``online`` (adapter disabled, per step).
        lr, epochs, max_steps: optimiser length; ``max_steps`` (if set) overrides ``epochs``.
        batch_size: samples per process per micro-step; grad_accum: micro-steps per optimizer step.
            The global batch is ``batch_size * processes * grad_accum``.
        warmup_ratio, scheduler: linear warmup, then ``cosine`` | ``linear`` | ``constant``.
        precision: ``fp32`` | ``bf16`` | ``fp16`` (base weights in that dtype + autocast; LoRA in fp32).
        gradient_checkpointing: trade compute for activation memory (non-reentrant).
        micro_batch_sequences: most sequences per forward (None: a micro-batch's all in one).
        max_length: tokenisation limit (must equal the reference stage's).
        lora: ``{r, alpha, dropout, target_modules, exclude_vision_tower}`` (defaults ``LORA_DEFAULTS``).
        seed: LoRA init, data order, dropout, mDPO crops.
        save_steps: checkpoint every N optimizer steps (0: never); checkpoints live in
            ``checkpoint_dir`` (default ``out_dir/checkpoints``) and are deleted when training ends.
        mdpo_corruption: ``hidden`` (the last list image) | ``crop`` (mDPO's 1-20 % random crop, whose
            reference is computed online with the adapter disabled since the crop changes each epoch).
        live_dir: dvclive folder (None: no logging); logging_steps: log every N optimizer steps.
        max_grad_norm: gradient clipping (0: off); weight_decay: AdamW's.
        num_workers: DataLoader workers for image decoding and tokenisation.
        keep_checkpoints: newest checkpoints kept while training. progress: a progress bar.
        callback: ``callback(step, metrics)`` after every optimizer step (tests use it to simulate a kill).
        max_pixels: ``model.max_pixels``, the processor's resolution budget (must equal the reference's).

    Returns:
        ``{"steps", "resumed_from", "final": {metric: value}, "history": [per-step metrics of this call],
        "adapter_dir", "merged_dir", "seconds", "samples_per_s", "n_truncated", "global_batch"}``.

    Raises:
        ManifestError / ReferenceError: a bad manifest row or missing/stale reference, naming the row.
        NonFiniteLossError: a NaN/inf loss, naming the batch's sample ids.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, DistributedType, set_seed
    from peft import get_peft_model
    from transformers import get_scheduler

    from lpoi.models import load_vlm

    _validate(locals())
    lora_kw = {**LORA_DEFAULTS, **(dict(lora) if lora else {})}
    unknown = sorted(set(lora_kw) - set(LORA_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown train.lora key(s) {unknown}; allowed: {sorted(LORA_DEFAULTS)}")
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    ckpt_root = Path(checkpoint_dir) if checkpoint_dir else out_dir / "checkpoints"
    dtype, mixed = PRECISIONS[precision]

    # LoRA on all linear layers adapts some layers the forward never uses (LLaVA-1.5 reads the vision
    # tower's second-to-last layer, so its last layer gets no gradient): DDP must be told.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    accelerator = Accelerator(
        mixed_precision=mixed,
        cpu=_no_accelerator(),
        kwargs_handlers=[ddp],
        gradient_accumulation_steps=grad_accum,
    )
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    world, rank, main = accelerator.num_processes, accelerator.process_index, accelerator.is_main_process
    set_seed(seed)

    # ---- data and reference
    samples = load_lists(lists_path, min_k=1 if method == "dpo" else 2)
    k = samples[0].k
    columns = method_columns(method, k, mdpo_corruption)
    n_cols = len(columns)
    ref_list = ref_rej = None
    if reference == "precomputed":
        if reference_path is None:
            raise ValueError("train.reference is 'precomputed' but no reference_path was given")
        ref_list, ref_rej, meta = load_reference(
            reference_path, samples, model_name=model_name, max_length=max_length, max_pixels=max_pixels
        )
        if meta.get("dtype") != dtype and main:
            warnings.warn(
                f"reference log-probs were computed in {meta.get('dtype')} but training runs in {dtype}; "
                "the rewards start slightly off zero",
                stacklevel=2,
            )
    global_batch = batch_size * world * grad_accum
    spe = steps_per_epoch(len(samples), global_batch)
    total_steps = int(max_steps) if max_steps is not None else max(1, math.ceil(epochs * spe))
    warmup_steps = math.ceil(warmup_ratio * total_steps)

    # ---- model
    model, processor = load_vlm(model_name, dtype=dtype, max_pixels=max_pixels)
    model.to(accelerator.device)
    if gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
            model.activation_checkpointing_enable({"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    set_seed(seed)  # again: loading may consume random numbers (a tiny model built on first use does)
    peft_model = get_peft_model(model, lora_config(**lora_kw))
    wrapper = SequenceLogps(peft_model, micro_batch_sequences)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    # The scheduler is stepped by hand once per optimizer step: accelerate's wrapper would step it once
    # per process, which assumes a per-process step count.
    sched = get_scheduler(
        SCHEDULERS[scheduler], optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )
    if accelerator.state.deepspeed_plugin is not None:  # no prepared data loader to read it from
        accelerator.state.deepspeed_plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size
    wrapper, optimizer = accelerator.prepare(wrapper, optimizer)
    if sharded and save_steps:
        warnings.warn(
            "periodic checkpoints are written for single-process and DDP runs only; with FSDP/DeepSpeed "
            "the run is not resumable (save_steps ignored)",
            stacklevel=2,
        )
        save_steps = 0

    # ---- resume
    cfg = dict(
        lists_sha256=sha256_file(lists_path),
        model_name=model_name,
        method=method,
        beta=beta,
        weights=dict(weights) if weights else None,
        delta=delta,
        reference=reference,
        lr=lr,
        epochs=epochs,
        max_steps=max_steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        world=world,
        warmup_ratio=warmup_ratio,
        scheduler=scheduler,
        precision=precision,
        max_length=max_length,
        max_pixels=max_pixels,
        lora=lora_kw,
        seed=seed,
        mdpo_corruption=mdpo_corruption,
        max_grad_norm=max_grad_norm,
        weight_decay=weight_decay,
    )
    fingerprint = _fingerprint(cfg)
    start_step = 0
    latest = _latest_checkpoint(ckpt_root)
    if latest is not None:
        state = json.loads((latest[1] / "trainer_state.json").read_text())
        if state.get("fingerprint") == fingerprint:
            state = _load_checkpoint(
                latest[1],
                accelerator=accelerator,
                peft_model=peft_model,
                optimizer=optimizer,
                scheduler=sched,
            )
            start_step = int(state["step"])
            if main:
                print(f"[train] resuming from {latest[1]} (step {start_step}/{total_steps})", flush=True)
        else:
            if main:
                warnings.warn(
                    f"checkpoints in {ckpt_root} come from a different configuration; starting afresh",
                    stacklevel=2,
                )
                shutil.rmtree(ckpt_root, ignore_errors=True)
    accelerator.wait_for_everyone()
    if main and ckpt_root.is_dir():
        for p in ckpt_root.glob(".tmp-step-*"):  # a checkpoint killed mid-write
            shutil.rmtree(p, ignore_errors=True)

    live = None
    if main and live_dir is not None:
        from dvclive import Live

        if start_step > 0 and Path(live_dir).is_dir():
            _truncate_live(Path(live_dir), start_step)
            live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, resume=True)
        else:
            live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None)

    # ---- loop
    batches = _micro_batches(
        start_step,
        total_steps,
        n=len(samples),
        batch_size=batch_size,
        grad_accum=grad_accum,
        world=world,
        rank=rank,
        seed=seed,
    )
    loader = torch.utils.data.DataLoader(
        _Items(),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_StepCollator(processor, samples, columns, max_length, seed),
        generator=torch.Generator().manual_seed(seed),
    )  # its own RNG: the global one drives dropout and resumes
    it = iter(loader)
    col_names = [f"reward_{c}" for c in columns]
    history: list[dict] = []
    n_truncated = 0
    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step")
    peft_model.train()
    for step in range(start_step, total_steps):
        t0 = time.perf_counter()
        sums: dict[str, float] = {}
        for a in range(grad_accum):
            idx, batch = next(it)
            batch = batch.to(accelerator.device)
            n_truncated += batch.n_truncated
            # accelerate's accumulation: no gradient all-reduce until the last micro-step, the loss scaled
            # by 1/grad_accum in backward (DeepSpeed scales it itself)
            with accelerator.accumulate(wrapper):
                policy = wrapper(batch.inputs, batch.response_mask, offsets=batch.offsets)
                policy = policy.view(len(idx), n_cols + 1)
                ref = _reference(batch, idx, columns, ref_list, ref_rej, wrapper, accelerator.device)
                out = preference_loss(
                    method,
                    policy_list_logps=policy[:, :n_cols],
                    policy_rejected_logps=policy[:, n_cols],
                    reference_list_logps=ref[:, :n_cols],
                    reference_rejected_logps=ref[:, n_cols],
                    beta=beta,
                    weights=weights,
                    delta=delta,
                )
                _check_finite(out["loss"], policy, [samples[i].id for i in idx], step, accelerator)
                accelerator.backward(out["loss"])
            _accumulate(sums, out, col_names)
        assert accelerator.sync_gradients, "micro-steps out of step with accelerate's accumulation counter"
        grad_norm = accelerator.clip_grad_norm_(params, max_grad_norm) if max_grad_norm > 0 else None
        optimizer.step()
        sched.step()
        optimizer.zero_grad(set_to_none=True)

        names = sorted(sums)
        vec = torch.tensor([sums[n] / grad_accum for n in names], device=accelerator.device)
        if world > 1:
            vec = accelerator.reduce(vec, reduction="mean")
        metrics = dict(zip(names, vec.tolist()))
        metrics["lr"] = sched.get_last_lr()[0]
        if grad_norm is not None:
            metrics["grad_norm"] = float(grad_norm)
        metrics["samples_per_s"] = global_batch / (time.perf_counter() - t0)
        history.append({"step": step + 1, **metrics})
        if live is not None and ((step + 1) % logging_steps == 0 or step + 1 == total_steps):
            live.step = step + 1
            for name, value in metrics.items():
                live.log_metric(name, value)
            live.next_step()
        if save_steps and (step + 1) % save_steps == 0 and step + 1 < total_steps:
            _save_checkpoint(
                ckpt_root,
                step + 1,
                accelerator=accelerator,
                peft_model=peft_model,
                optimizer=optimizer,
                scheduler=sched,
                keep=keep_checkpoints,
                state={"step": step + 1, "fingerprint": fingerprint, "config": cfg, "live_step": step + 1},
            )
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{metrics['loss']:.4f}")
        if callback is not None:
            callback(step + 1, metrics)
    if bar is not None:
        bar.close()

    # ---- outputs
    accelerator.wait_for_everyone()
    adapter_dir, merged_dir = out_dir / "adapter", None
    seconds = time.perf_counter() - t_start
    steps_run = total_steps - start_step
    unwrapped = accelerator.unwrap_model(wrapper).model
    full_sd = None
    if sharded:  # every process takes part in gathering the sharded weights
        full_sd = {
            k.removeprefix("model."): v
            for k, v in accelerator.get_state_dict(wrapper).items()
            if "lora_" in k
        }
    if main:
        tmp = out_dir / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        unwrapped.save_pretrained(tmp, safe_serialization=True, state_dict=full_sd)
        shutil.rmtree(adapter_dir, ignore_errors=True)
        os.replace(tmp, adapter_dir)
        if merge:
            merged_dir = out_dir / "merged"
            if sharded:  # the sharded model cannot be merged in place: reload base + adapter
                merge_adapter(model_name=model_name, adapter_dir=adapter_dir, out_dir=merged_dir, dtype=dtype,
                              max_pixels=max_pixels)
            else:
                _save_merged(unwrapped.merge_and_unload(), processor, merged_dir)
        shutil.rmtree(ckpt_root, ignore_errors=True)
        if live is not None:
            live.log_metric("train_seconds", seconds, plot=False)
            live.log_metric(
                "train_samples_per_s", steps_run * global_batch / seconds if seconds else 0.0, plot=False
            )
            live.log_metric("n_truncated", n_truncated, plot=False)
            live.end()
    accelerator.wait_for_everyone()
    return {
        "steps": total_steps,
        "resumed_from": start_step,
        "final": history[-1] if history else {},
        "history": history,
        "adapter_dir": str(adapter_dir),
        "merged_dir": str(merged_dir) if merged_dir else None,
        "seconds": seconds,
        "samples_per_s": steps_run * global_batch / seconds if seconds else 0.0,
        "n_truncated": n_truncated,
        "global_batch": global_batch,
    }


def _save_merged(model, processor, merged_dir: Path) -> None:
    tmp = merged_dir.parent / f".{merged_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    shutil.rmtree(merged_dir, ignore_errors=True)
    os.replace(tmp, merged_dir)


def merge_adapter(
    *, model_name: str, adapter_dir: str | Path, out_dir: str | Path, dtype: str = "float32",
    max_pixels: int | None = None,
) -> Path:
    """Base model + LoRA adapter -> merged full weights and processor in ``out_dir`` (safetensors).

    The merged model loads with plain ``from_pretrained`` (no peft needed at generation time)."""
    from peft import PeftModel

    from lpoi.models import load_vlm

    model, processor = load_vlm(model_name, dtype=dtype, max_pixels=max_pixels)
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    _save_merged(merged, processor, Path(out_dir))
    return Path(out_dir)


def _no_accelerator() -> bool:
    """True on CPU-only machines: accelerate then sets up multi-process CPU training (gloo) under
    ``torchrun``; without ``cpu=True`` it would silently run every process as a separate single run."""
    if torch.cuda.is_available():
        return False
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    return not ((mps is not None and mps.is_available()) or (xpu is not None and xpu.is_available()))


def _reference(batch: SequenceBatch, idx: list[int], columns, ref_list, ref_rej, wrapper, device) -> Tensor:
    """Reference log-probs ``(B, C + 1)`` of the batch: from the file, or online with the adapter off."""
    b, c1 = len(idx), len(columns) + 1
    if ref_list is None:
        return _online_logps(batch, wrapper).view(b, c1)
    ref = torch.empty(b, c1, dtype=torch.float64)
    for j, col in enumerate(columns):
        if col != CROP:
            ref[:, j] = ref_list[idx, int(col)]
    ref[:, -1] = ref_rej[idx]
    ref = ref.to(device)
    online_rows = [r * c1 + j for r in range(b) for j, col in enumerate(columns) if col == CROP]
    if not online_rows:
        return ref
    flat = ref.view(-1).clone()
    flat[online_rows] = _online_logps(batch.select(online_rows), wrapper)
    return flat.view(b, c1)


def _online_logps(batch: SequenceBatch, wrapper) -> Tensor:
    """The frozen base model's log-probs: the same weights with the LoRA adapter disabled (eval mode),
    through the prepared module so autocast, DDP and FSDP behave as in the policy forward."""
    with torch.no_grad():
        return wrapper(batch.inputs, batch.response_mask, reference=True, offsets=batch.offsets)


def _check_finite(loss: Tensor, policy: Tensor, ids: list[str], step: int, accelerator) -> None:
    ok = torch.isfinite(loss.detach()).all() & torch.isfinite(policy.detach()).all()
    flags = (
        accelerator.gather(ok.float().reshape(1)) if accelerator.num_processes > 1 else ok.reshape(1).float()
    )
    if bool((flags > 0).all()):
        return
    if not bool(ok):
        raise NonFiniteLossError(
            f"non-finite loss ({float(loss.detach())}) at optimizer step {step + 1} on samples {ids}; "
            "check these rows' answers and images, or lower the learning rate"
        )
    raise NonFiniteLossError(
        f"non-finite loss on another process at optimizer step {step + 1}; see its error"
    )


def _accumulate(sums: dict[str, float], out: dict[str, Tensor], col_names: list[str]) -> None:
    def add(name, value):
        sums[name] = sums.get(name, 0.0) + float(value)

    add("loss", out["loss"].detach())
    for comp in ("dpo", "list", "anchor"):
        if comp in out:
            add(f"loss_{comp}", out[comp].detach())
    rewards = out["rewards"].mean(0)
    for name, v in zip(col_names, rewards.tolist()):
        add(name, v)
    add("reward_rejected", out["rewards_rejected"].mean())
    add("margin", out["margin"])
    add("reward_accuracy", out["reward_accuracy"])
    if "ranking_accuracy" in out:
        add("ranking_accuracy", out["ranking_accuracy"])


def main(argv: list[str] | None = None) -> None:
    """``python -m lpoi.train.trainer KWARGS.json``: run ``train(**kwargs)`` (for ``accelerate launch``)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("kwargs_json", help="JSON file with train()'s keyword arguments")
    ap.add_argument("--summary", help="write the returned summary here (main process)")
    args = ap.parse_args(argv)
    kwargs = json.loads(Path(args.kwargs_json).read_text())
    summary = train(**kwargs)
    if args.summary and int(os.environ.get("RANK", "0")) == 0:
        atomic_write_json(args.summary, summary)


if __name__ == "__main__":
    main()
