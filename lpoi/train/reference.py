"""The reference stage: the frozen base model's log-probs of every unique sequence, computed once.

DPO-style losses need ``log pi_ref`` of every sequence at every step. The official LPOI/mDPO code
recomputes them with the adapter disabled in every step -- 7 extra forwards per sample per epoch.
They depend only on the base model, the lists and the tokenisation (``max_length``), so this stage
computes each once, and ``dvc exp run`` over training params never recomputes them.

File format (JSONL, diff-able, resumable): the first line is ``{"meta": {...}}`` with the model
name, K, ``max_length``, dtype and format version; then one line per sample,
``{"id", "digest", "key", "tokens", "list": [K floats], "rejected": float}`` -- ``list[k]`` is
log pi_ref(chosen | image k, prompt), ``rejected`` is log pi_ref(rejected | original image, prompt),
both summed over the response tokens. Rows are keyed by content, never by id alone: ``key``
(:func:`row_key`) hashes the model identity, the tokenisation (code, library versions,
``max_length``), the texts and the bytes of every list image, and a stored row is reused only under
the same key (so ``lists.fill=mean`` recomputes every row); ``tokens`` hashes the exact token ids the
row was computed from (checked whenever a row's block is recomputed; training can check it too);
``digest`` ties a row to the manifest row's text and image paths (what :func:`load_reference` checks).
A killed run resumes; blocks of ``batch_size`` samples are computed whole, so resumed values are
byte-identical to an uninterrupted run's.
"""

from __future__ import annotations

import hashlib
import json
import sys
from functools import partial
from pathlib import Path

import torch

from lpoi.io import atomic_write_text, parse_jsonl_line, sha256_file
from lpoi.runner import Runner, StageOutput, Write
from lpoi.train.collate import Tokenization, collate_samples
from lpoi.train.data import ListSample, load_lists
from lpoi.train.logprobs import sequence_logps

__all__ = ["FORMAT_VERSION", "ReferenceError", "load_reference", "reference_meta", "row_key", "run_reference"]

FORMAT_VERSION = 1


class ReferenceError(ValueError):
    """Reference log-probs that do not match the training run (model, K, max_length, a sample)."""


def _tokenization_tag(tokenization: Tokenization | None) -> dict | None:
    """What sets the token ids beyond ``max_length``: None for the default ``answer`` mode (so the files and
    keys of every existing run stay as they are), else the mode and its prompt limit."""
    if tokenization is None or tokenization.mode == "answer":
        return None
    return {"mode": tokenization.mode, "max_prompt_length": tokenization.max_prompt_length}


def reference_meta(*, model_name: str, k: int, max_length: int | None, dtype: str,
                   max_pixels: int | None = None, tokenization: Tokenization | None = None) -> dict:
    # max_pixels changes the image tokens (Qwen, SmolVLM) or only the pixels (Idefics2): part of the meta
    meta = {
        "format": FORMAT_VERSION,
        "model_name": model_name,
        "k": k,
        "max_length": max_length,
        "dtype": dtype,
        "max_pixels": max_pixels,
    }
    tag = _tokenization_tag(tokenization)
    if tag is not None:
        meta["tokenization"] = tag
    return meta


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


def _code_digest() -> str:
    """The tokenisation code and libraries behind the token ids (part of every row key)."""
    import tokenizers
    import transformers

    from lpoi.models import batching, chat
    from lpoi.train import collate, data

    h = hashlib.sha256(f"{transformers.__version__} {tokenizers.__version__}".encode())
    for mod in (batching, chat, collate, data):
        h.update(Path(mod.__file__).read_bytes())
    return h.hexdigest()


def row_key(sample: ListSample, model_digest: str, max_length: int | None, code_digest: str,
            tokenization: Tokenization | None = None) -> str:
    """What a reference row is valid for: the model, the tokenisation (code, libraries, ``max_length``, the
    ``official`` mode and its prompt limit), the texts and the bytes of every list image. A stored row is
    reused only under the same key."""
    parts = [model_digest, max_length, code_digest, sample.prompt, sample.chosen, sample.rejected]
    tag = _tokenization_tag(tokenization)
    if tag is not None:  # appended only when set: the default mode's keys are those of earlier runs
        parts.append(tag)
    h = hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode())
    for p in sample.images:
        h.update(sha256_file(p).encode())
    return h.hexdigest()


def _tokens_digests(batch, n: int, k: int) -> list[str]:
    """Per sample, sha256 of the exact token ids and response positions of its ``k + 1`` sequences."""
    ids, att, resp = batch.inputs["input_ids"], batch.inputs["attention_mask"].bool(), batch.response_mask
    out = []
    for b in range(n):
        h = hashlib.sha256()
        for i in range(b * (k + 1), (b + 1) * (k + 1)):
            h.update(json.dumps([ids[i][att[i]].tolist(), resp[i].nonzero().flatten().tolist()]).encode())
        out.append(h.hexdigest())
    return out


def _drop_stale(out_path: Path, meta: dict, samples: list[ListSample], key) -> dict[str, dict]:
    """Remove stored rows whose key no longer matches their sample (the file is rewritten in place, order
    kept); return the rows kept, by id. A file with another meta is left for :class:`StageOutput` to reset."""
    if not out_path.exists():
        return {}
    old_meta, rows = _read(out_path)
    if old_meta != meta:
        return {}
    by_id = {s.id: s for s in samples}
    keep = [r for r in rows if r.get("id") in by_id and r.get("key") == key(by_id[r["id"]])]
    if len(keep) != len(rows):
        print(f"[lpoi] {out_path}: {len(rows) - len(keep)} stored row(s) were computed from other images, texts, "
              "tokenisation or model; recomputing them", file=sys.stderr)
        # the lines the runner wrote, byte for byte (so their journal entries still match)
        atomic_write_text(out_path, "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in [{"meta": meta}, *keep]))
    return {r["id"]: r for r in keep}


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
    journal: bool = False,
    trust_remote_code: bool = False,
    model_digest: str | None = None,
    tokenization: Tokenization | None = None,
) -> dict:
    """Compute and store the reference log-probs of every sample of ``lists_path`` (resumable).

    Args:
        lists_path: the lists manifest.
        out_path: the JSONL to write (see the module docstring); an existing file with the same meta
            is resumed, one with a different meta is rewritten, rows whose key changed are redone.
        model_name: the base model (``tiny/idefics2``, a hub id or a folder).
        dtype: weights dtype for the forwards (``float32`` is exact; ``bfloat16`` halves memory).
        batch_size: samples per forward batch (each brings K + 1 sequences). Blocks of ``batch_size``
            consecutive samples are computed whole (:mod:`lpoi.runner`), so a resumed run writes
            byte-identical values.
        micro_batch_sequences: most sequences per forward (None = a whole batch).
        max_length: the tokenisation limit -- must equal the training run's.
        device: ``cuda``, ``cpu``, ... (default: CUDA when available).
        progress: show a progress bar.
        max_pixels: ``model.max_pixels`` (the processor's resolution budget) -- must equal the training run's.
        journal: check and keep the output journal (stage runs; :class:`lpoi.runner.StageOutput`).
        model_digest: :func:`lpoi.models.model_digest` of ``model_name`` when the caller has it (the stage's
            fingerprint does: a local multi-GB folder is then hashed once, not twice).
        tokenization: the ``reference`` section's :class:`~lpoi.train.collate.Tokenization` (the training
            run's); its ``max_length`` must equal ``max_length`` when both are given.

    Returns:
        Stats: ``n_samples``, ``n_computed``, ``n_resumed`` (= ``resumed``), ``k``, ``n_truncated``,
        ``seconds``, ``samples_per_s``; the stage's metrics under ``"output"``.
    """
    from lpoi.models import load_vlm
    from lpoi.models import model_digest as digest_of

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tokenization is not None:
        if max_length is not None and max_length != tokenization.max_length:
            raise ValueError(f"max_length={max_length} contradicts tokenization.max_length={tokenization.max_length}")
        max_length = tokenization.max_length
    samples = load_lists(lists_path, min_k=1)
    k = samples[0].k
    meta = reference_meta(model_name=model_name, k=k, max_length=max_length, dtype=dtype, max_pixels=max_pixels,
                          tokenization=tokenization)
    out_path = Path(out_path)
    row_key_of = partial(row_key, model_digest=model_digest or digest_of(model_name), max_length=max_length,
                         code_digest=_code_digest(), tokenization=tokenization)
    keys: dict[str, str] = {}

    def key(s: ListSample) -> str:  # each sample's images hashed once, by whichever of the two asks first
        if s.id not in keys:
            keys[s.id] = row_key_of(s)
        return keys[s.id]

    stored = _drop_stale(out_path, meta, samples, key)
    rows = [{"id": s.id, "sample": s} for s in samples]
    with StageOutput(out_path, None, header={"meta": meta}, journal=journal) as out:
        model = processor = None
        if not all(out.done(s.id) for s in samples):
            device = device or ("cuda" if torch.cuda.is_available() else "cpu")
            model, processor = load_vlm(model_name, dtype=dtype, device=device, max_pixels=max_pixels,
                                        trust_remote_code=trust_remote_code)
        # rows an earlier run finished (the only ones `stored` holds); a set, not `out`: process may run on a
        # Ray actor (compute.engine), which gets copies of what it uses
        resumed = {s.id for s in samples if out.done(s.id)}

        def load(block: list[dict]):
            chunk = [r["sample"] for r in block]
            batch = collate_samples(processor, chunk, columns=tuple(range(k)), max_length=max_length,
                                    tokenization=tokenization)
            return batch, [key(s) for s in chunk], _tokens_digests(batch, len(chunk), k)

        def process(loaded, block: list[dict]) -> list:
            batch, keys, tokens = loaded
            for r, t in zip(block, tokens):
                old = stored.get(r["id"]) if r["id"] in resumed else None
                if old is not None and old.get("tokens") != t:
                    raise ReferenceError(f"{out_path}: the stored row of sample {r['id']!r} was computed from other "
                                         "token ids than its key promises; delete the file and re-run the stage")
            with torch.no_grad():
                logps = sequence_logps(model, batch.to(device), micro_batch_sequences=micro_batch_sequences)
            logps = logps.view(len(block), k + 1).cpu().tolist()
            # the block's truncations travel with its first row (counted by the runner, wherever this ran)
            return [Write({"id": r["id"], "digest": r["sample"].digest, "key": kk, "tokens": t, "list": v[:k],
                           "rejected": v[k]}, counts={"n_truncated": batch.n_truncated if i == 0 else 0})
                    for i, (r, kk, t, v) in enumerate(zip(block, keys, tokens, logps))]

        runner = Runner(out, batch_size, workers=1, progress=progress, desc="reference")
        stats = runner.run(rows, load, process, total=len(rows))
    return {"n_samples": len(samples), "n_computed": stats["written"], "n_resumed": stats["resumed"], "k": k,
            "n_truncated": 0, **stats, "output": {"n_samples": len(samples), "k": k}}


def load_reference(
    path: str | Path, samples: list[ListSample], *, model_name: str, max_length: int | None,
    max_pixels: int | None = None, tokenization: Tokenization | None = None,
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
    want = {"model_name": model_name, "k": k, "max_length": max_length, "max_pixels": max_pixels,
            "tokenization": _tokenization_tag(tokenization)}
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
