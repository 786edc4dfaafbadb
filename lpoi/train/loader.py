"""The recipe's data loader: this process's micro-batches as a pure function of (seed, step).

A step's samples come from a permutation of the manifest seeded by ``seed + epoch``
(:func:`lpoi.train.data.step_sample_indices`), split over processes and micro-steps, so a resumed run
starts at any step without replaying a loader, and ``P`` processes x batch ``b`` see exactly the
samples of one process with batch ``P * b`` (tested).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lpoi.train.collate import Tokenization, collate_samples
from lpoi.train.data import ListSample, step_sample_indices, steps_per_epoch

__all__ = ["micro_batches", "step_loader"]


def micro_batches(
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
    """This process's micro-batches of ``(epoch, sample index)``, in order, for steps start..total-1."""
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


class _StepCollator:
    """DataLoader collate: ``[(epoch, index), ...]`` -> (indices, SequenceBatch). Picklable for workers."""

    def __init__(self, processor, samples: Sequence[ListSample], columns, tokenization: Tokenization, seed):
        self.processor, self.samples, self.columns = processor, samples, columns
        self.tokenization, self.seed = tokenization, seed

    def __call__(self, items):
        epochs = {e for e, _ in items}
        idx = [i for _, i in items]
        batch = collate_samples(
            self.processor,
            [self.samples[i] for i in idx],
            columns=self.columns,
            tokenization=self.tokenization,
            crop_key=f"{self.seed}:{min(epochs)}",  # mDPO's crop changes per epoch, reproducibly
        )
        return idx, batch


class _Items(torch.utils.data.Dataset):
    def __getitem__(self, item):
        return item

    def __len__(self):  # pragma: no cover - only the batch sampler indexes it
        return 0


def step_loader(processor, samples, columns, *, batches, tokenization: Tokenization, seed: int, num_workers: int):
    """A DataLoader over ``batches`` (:func:`micro_batches`): image decoding and tokenisation in workers."""
    return torch.utils.data.DataLoader(
        _Items(),
        batch_sampler=batches,
        num_workers=num_workers,
        collate_fn=_StepCollator(processor, samples, columns, tokenization, seed),
        generator=torch.Generator().manual_seed(seed),
    )  # its own RNG: the global one drives dropout and is restored on resume
