"""The reference stage: the frozen base model's log-probs of every unique sequence, computed once.

DPO-style losses need ``log pi_ref`` of every sequence at every step. The official LPOI/mDPO code
recomputes them with the adapter disabled in every step -- 7 extra forwards per sample per epoch.
They depend only on the base model, the lists and the tokenisation (``max_length``), so this stage
computes each once, and ``dvc exp run`` over training params never recomputes them.

File format (JSONL, diff-able, resumable): the first line is ``{"meta": {...}}`` with the model
name, K, ``max_length``, dtype and format version; then one line per sample,
``{"id", "digest", "list": [K floats], "rejected": float}`` -- ``list[k]`` is log pi_ref(chosen |
image k, prompt), ``rejected`` is log pi_ref(rejected | original image, prompt), both summed over
the response tokens. ``digest`` ties a row to the manifest row's text and image paths, so a stale
file is detected per sample. A killed run resumes: finished ids are skipped.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from lpoi.io import JsonlAppender, atomic_write_text, parse_jsonl_line
from lpoi.train.collate import collate_samples
from lpoi.train.data import ListSample, load_lists
from lpoi.train.logprobs import sequence_logps

__all__ = ["FORMAT_VERSION", "ReferenceError", "load_reference", "reference_meta", "run_reference"]

FORMAT_VERSION = 1


class ReferenceError(ValueError):
    """Reference log-probs that do not match the training run (model, K, max_length, a sample)."""


def reference_meta(*, model_name: str, k: int, max_length: int | None, dtype: str,
                   max_pixels: int | None = None) -> dict:
    # max_pixels changes the image tokens (Qwen, SmolVLM) or only the pixels (Idefics2): part of the meta
    return {
        "format": FORMAT_VERSION,
        "model_name": model_name,
        "k": k,
        "max_length": max_length,
        "dtype": dtype,
        "max_pixels": max_pixels,
    }


def _read(path: Path) -> tuple[dict | None, list[dict]]:
    meta, rows = None, []
    raw = path.read_bytes()
    cut = raw.rfind(b"\n") + 1  # a partial last line (killed mid-write) is ignored
    for i, line in enumerate(raw[:cut].split(b"\n")[:-1]):
        if not line.strip():
            continue
        obj = parse_jsonl_line(line, path, i + 1)  # a corrupt complete line: an error naming file and line
        if i == 0 and "meta" in obj:
            meta = obj["meta"]
        else:
            rows.append(obj)
    return meta, rows


def run_reference(
    lists_path: str | Path,
    out_path: str | Path,
    *,
    model_name: str,
    dtype: str = "float32",
    batch_size: int = 4,
    micro_batch_sequences: int | None = None,
    max_length: int | None = None,
    device: str | None = None,
    progress: bool = True,
    max_pixels: int | None = None,
) -> dict:
    """Compute and store the reference log-probs of every sample of ``lists_path`` (resumable).

    Args:
        lists_path: the lists manifest.
        out_path: the JSONL to write (see the module docstring); an existing file with the same meta
            is resumed, one with a different meta is rewritten, rows whose manifest row changed are redone.
        model_name: the base model (``tiny/idefics2``, a hub id or a folder).
        dtype: weights dtype for the forwards (``float32`` is exact; ``bfloat16`` halves memory).
        batch_size: samples per forward batch (each brings K + 1 sequences).
        micro_batch_sequences: most sequences per forward (None = a whole batch).
        max_length: the tokenisation limit -- must equal the training run's.
        device: ``cuda``, ``cpu``, ... (default: CUDA when available).
        progress: show a progress bar.
        max_pixels: ``model.max_pixels`` (the processor's resolution budget) -- must equal the training run's.

    Returns:
        Stats: ``n_samples``, ``n_computed``, ``n_resumed``, ``k``, ``n_truncated``, ``seconds``,
        ``samples_per_s``.
    """
    from lpoi.models import load_vlm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    t0 = time.perf_counter()
    samples = load_lists(lists_path, min_k=1)
    k = samples[0].k
    meta = reference_meta(model_name=model_name, k=k, max_length=max_length, dtype=dtype, max_pixels=max_pixels)
    out_path = Path(out_path)
    digests = {s.id: s.digest for s in samples}
    if out_path.exists():
        old_meta, rows = _read(out_path)
        keep = [r for r in rows if digests.get(r.get("id")) == r.get("digest")] if old_meta == meta else []
        if old_meta != meta or len(keep) != len(rows) or out_path.read_bytes()[-1:] not in (b"\n", b""):
            atomic_write_text(out_path, "".join(json.dumps(x) + "\n" for x in [{"meta": meta}, *keep]))
    else:
        atomic_write_text(out_path, json.dumps({"meta": meta}) + "\n")

    n_trunc = n_done = 0
    with JsonlAppender(out_path) as out:
        todo = [s for s in samples if s.id not in out.done]
        n_resumed = len(samples) - len(todo)
        if todo:
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model, processor = load_vlm(model_name, dtype=dtype, device=device, max_pixels=max_pixels)
            bar = _bar(len(todo), progress)
            columns = tuple(range(k))
            for start in range(0, len(todo), batch_size):
                chunk = todo[start : start + batch_size]
                batch = collate_samples(processor, chunk, columns=columns, max_length=max_length).to(device)
                with torch.no_grad():
                    logps = sequence_logps(model, batch, micro_batch_sequences=micro_batch_sequences)
                logps = logps.view(len(chunk), k + 1).cpu()
                n_trunc += batch.n_truncated
                for s, row in zip(chunk, logps.tolist()):
                    out.write({"id": s.id, "digest": s.digest, "list": row[:k], "rejected": row[k]})
                n_done += len(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
    secs = time.perf_counter() - t0
    return {
        "n_samples": len(samples),
        "n_computed": n_done,
        "n_resumed": n_resumed,
        "k": k,
        "n_truncated": n_trunc,
        "seconds": secs,
        "samples_per_s": n_done / secs if secs > 0 else 0.0,
    }


def load_reference(
    path: str | Path, samples: list[ListSample], *, model_name: str, max_length: int | None,
    max_pixels: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Reference log-probs aligned with ``samples``: ``(list (N, K) float64, rejected (N,), meta)``.

    Raises:
        ReferenceError: the file was made for another model, K or ``max_length``, or a sample has no
            row (or a row made from a different manifest row) -- each message names what to re-run.
    """
    path = Path(path)
    if not path.exists():
        raise ReferenceError(
            f"reference log-probs not found: {path} (run the reference stage first, "
            "or use train.reference: online)"
        )
    meta, rows = _read(path)
    if meta is None:
        raise ReferenceError(f"{path}: no meta header line; re-run the reference stage")
    k = samples[0].k
    want = {"model_name": model_name, "k": k, "max_length": max_length, "max_pixels": max_pixels}
    for key, value in want.items():
        if meta.get(key) != value:
            raise ReferenceError(
                f"{path}: reference log-probs were computed with {key}={meta.get(key)!r} but training uses "
                f"{key}={value!r}; re-run the reference stage with the training run's model and lists"
            )
    by_id = {r["id"]: r for r in rows}
    lst, rej = [], []
    for s in samples:
        r = by_id.get(s.id)
        if r is None:
            raise ReferenceError(
                f"{path}: no reference log-probs for sample {s.id!r}; re-run the reference stage"
            )
        if r.get("digest") != s.digest:
            raise ReferenceError(
                f"{path}: the reference row of sample {s.id!r} was computed from a different "
                "manifest row (text or images changed); re-run the reference stage"
            )
        if len(r["list"]) != k:
            raise ReferenceError(f"{path}: sample {s.id!r} has {len(r['list'])} list log-probs, expected {k}")
        lst.append(r["list"])
        rej.append(r["rejected"])
    return torch.tensor(lst, dtype=torch.float64), torch.tensor(rej, dtype=torch.float64), meta


def _bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="reference", unit="sample")
