"""The reference stage: the frozen base model's log-probs of every unique sequence, computed once.

DPO-style losses need ``log pi_ref`` of every sequence at every step. The official LPOI/mDPO code
recomputes them with the adapter disabled in every step -- 7 extra forwards per sample per epoch.
They depend only on the base model, the lists and the tokenisation (``max_length``), so this stage
computes each once, and ``dvc exp run`` over training params never recomputes them.

File format (JSONL, diff-able, resumable): the first line is ``{"meta": {...}}`` with the model
name, K, ``max_length``, dtype and format version; then one line per sample,
``{"id", "digest", "key", "seqs", "list": [K floats], "rejected": float, "seal"}`` -- ``list[k]`` is
log pi_ref(chosen | image k, prompt), ``rejected`` is log pi_ref(rejected | original image, prompt),
both summed over the response tokens. Rows are keyed by content, never by id alone: ``key``
(:func:`row_key`) hashes the model identity, the tokenisation (code, library versions,
``max_length``), the texts and the bytes of every list image, and a stored row is reused only under
the same key (so ``lists.fill=mean`` recomputes every row); ``seqs`` holds, per sequence (K list
columns, then the rejected answer), the sha256 of the exact token ids and response positions it was
computed from (:func:`sequence_digests`; checked whenever a row's block is recomputed, and by training
against every batch it builds); ``seal`` hashes ``seqs`` with the values, so a value edited by hand
is caught when the file is loaded (:func:`load_reference_rows`); ``digest`` ties a row to the manifest
row's text and image paths.
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
from lpoi.train.collate import CROP, SequenceBatch, Tokenization, collate_samples
from lpoi.train.data import ListSample, load_lists
from lpoi.train.logprobs import sequence_logps

__all__ = ["FORMAT_VERSION", "ReferenceError", "ReferenceRows", "load_reference", "load_reference_rows",
           "reference_meta", "row_key", "row_seal", "run_reference", "sequence_digests"]

FORMAT_VERSION = 2  # 2: per-sequence token digests and a seal over them and the values


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


def _read(path: Path, lines: list[int] | None = None) -> tuple[dict | None, list[dict]]:
    """The meta and the rows; ``lines`` (when given) gets each row's 1-based line number."""
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
            if lines is not None:
                lines.append(i + 1)
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


def sequence_digests(batch: SequenceBatch) -> list[str]:
    """Per sequence of ``batch``, sha256 of its exact token ids and response positions, both taken without the
    padding: the same whatever the batch mates (training's batches are not the reference stage's)."""
    ids, att, resp = batch.inputs["input_ids"], batch.inputs["attention_mask"].bool(), batch.response_mask
    return [hashlib.sha256(json.dumps([ids[i][att[i]].tolist(), resp[i][att[i]].nonzero().flatten().tolist()])
                           .encode()).hexdigest() for i in range(ids.shape[0])]


def row_seal(seqs: list[str], lst: list[float], rejected: float) -> str:
    # json's float repr round-trips, so a row read back seals to the same digest it was written with
    return hashlib.sha256(json.dumps([seqs, lst, rejected]).encode()).hexdigest()


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
            d = sequence_digests(batch)
            return batch, [key(s) for s in chunk], [d[b * (k + 1) : (b + 1) * (k + 1)] for b in range(len(chunk))]

        def process(loaded, block: list[dict]) -> list:
            batch, keys, seqs = loaded
            for r, t in zip(block, seqs):
                old = stored.get(r["id"]) if r["id"] in resumed else None
                if old is not None and old.get("seqs") != t:
                    raise ReferenceError(f"{out_path}: the stored row of sample {r['id']!r} was computed from other "
                                         "token ids than its key promises; delete the file and re-run the stage")
            with torch.no_grad():
                logps = sequence_logps(model, batch.to(device), micro_batch_sequences=micro_batch_sequences)
            logps = logps.view(len(block), k + 1).cpu().tolist()
            # the block's truncations travel with its first row (counted by the runner, wherever this ran)
            return [Write({"id": r["id"], "digest": r["sample"].digest, "key": kk, "seqs": t, "list": v[:k],
                           "rejected": v[k], "seal": row_seal(t, v[:k], v[k])},
                          counts={"n_truncated": batch.n_truncated if i == 0 else 0})
                    for i, (r, kk, t, v) in enumerate(zip(block, keys, seqs, logps))]

        runner = Runner(out, batch_size, workers=1, progress=progress, desc="reference")
        stats = runner.run(rows, load, process, total=len(rows))
    return {"n_samples": len(samples), "n_computed": stats["written"], "n_resumed": stats["resumed"], "k": k,
            "n_truncated": 0, **stats, "output": {"n_samples": len(samples), "k": k}}


def load_reference(
    path: str | Path, samples: list[ListSample], *, model_name: str, max_length: int | None,
    max_pixels: int | None = None, tokenization: Tokenization | None = None,
) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Reference log-probs aligned with ``samples``: ``(list (N, K) float64, rejected (N,), meta)``
    (:func:`load_reference_rows` without the per-batch check)."""
    ref = load_reference_rows(path, samples, model_name=model_name, max_length=max_length, max_pixels=max_pixels,
                              tokenization=tokenization)
    return ref.list, ref.rejected, ref.meta


class ReferenceRows:
    """The reference rows of a training run, aligned with its samples, and the check of every batch.

    ``list`` (N, K) and ``rejected`` (N,) float64; ``seqs[i]``: sample i's K + 1 sequence digests.
    """

    def __init__(self, path: Path, samples: list[ListSample], rows: list[dict], lines: list[int], meta: dict):
        self.path, self.samples, self.meta, self.lines = path, samples, meta, lines
        self.seqs = [r["seqs"] for r in rows]
        self.list = torch.tensor([r["list"] for r in rows], dtype=torch.float64)
        self.rejected = torch.tensor([r["rejected"] for r in rows], dtype=torch.float64)

    def check_batch(self, batch: SequenceBatch, idx: list[int], columns) -> None:
        """Each sample's built sequences (``columns`` + the rejected answer, as :func:`collate_samples`
        lays them out) must be the ones its row was computed from: one hash per sequence.

        Raises:
            ReferenceError: naming the file, line and sample.
        """
        digests, c1 = sequence_digests(batch), len(columns) + 1
        for b, i in enumerate(idx):
            want = self.seqs[i]
            for j, col in enumerate((*columns, "rejected")):
                if col == CROP:  # mDPO's crop is not in the file: computed online
                    continue
                if digests[b * c1 + j] != want[-1 if col == "rejected" else int(col)]:
                    what = "the rejected answer" if col == "rejected" else f"list image {col}"
                    raise ReferenceError(
                        f"{self.path}:{self.lines[i]}: sample {self.samples[i].id!r}: the tokens training built for "
                        f"{what} are not those its reference row was computed from (the row was edited, or the "
                        "tokenisation changed since); re-run the reference stage")


def load_reference_rows(
    path: str | Path, samples: list[ListSample], *, model_name: str, max_length: int | None,
    max_pixels: int | None = None, tokenization: Tokenization | None = None,
) -> ReferenceRows:
    """The reference rows of ``samples``, each checked against its seal (one hash per row).

    Raises:
        ReferenceError: the file was made for another model, K or ``max_length``, a sample has no
            row (or a row made from a different manifest row), or a row is not what the reference stage
            wrote (an edited value or digest) -- each message names the file, the row and what to re-run.
    """
    path = Path(path)
    if not path.exists():
        raise ReferenceError(
            f"reference log-probs not found: {path} (run the reference stage first, "
            "or use train.reference: online)"
        )
    linenos: list[int] = []
    meta, rows = _read(path, linenos)
    if meta is None:
        raise ReferenceError(f"{path}: no meta header line; re-run the reference stage")
    if meta.get("format") != FORMAT_VERSION:
        raise ReferenceError(f"{path}: reference format {meta.get('format')!r}, this code reads format "
                             f"{FORMAT_VERSION}; re-run the reference stage")
    k = samples[0].k
    want = {"model_name": model_name, "k": k, "max_length": max_length, "max_pixels": max_pixels,
            "tokenization": _tokenization_tag(tokenization)}
    for key, value in want.items():
        if meta.get(key) != value:
            raise ReferenceError(
                f"{path}: reference log-probs were computed with {key}={meta.get(key)!r} but training uses "
                f"{key}={value!r}; re-run the reference stage with the training run's model and lists"
            )
    by_id = {r["id"]: (r, n) for r, n in zip(rows, linenos)}
    picked, lines = [], []
    for s in samples:
        r, n = by_id.get(s.id, (None, None))
        if r is None:
            raise ReferenceError(
                f"{path}: no reference log-probs for sample {s.id!r}; re-run the reference stage"
            )
        if r.get("digest") != s.digest:
            raise ReferenceError(
                f"{path}:{n}: the reference row of sample {s.id!r} was computed from a different "
                "manifest row (text or images changed); re-run the reference stage"
            )
        lst, rej, seqs = r.get("list"), r.get("rejected"), r.get("seqs")
        if not (isinstance(lst, list) and len(lst) == k and isinstance(seqs, list) and len(seqs) == k + 1):
            raise ReferenceError(f"{path}:{n}: sample {s.id!r} has {len(lst) if isinstance(lst, list) else 'no'} "
                                 f"list log-probs and {len(seqs) if isinstance(seqs, list) else 'no'} sequence "
                                 f"digests, expected {k} and {k + 1}; re-run the reference stage")
        if r.get("seal") != row_seal(seqs, lst, rej):
            raise ReferenceError(
                f"{path}:{n}: the reference row of sample {s.id!r} is not what the reference stage wrote (a "
                "log-prob or a token digest was edited); re-run the reference stage")
        picked.append(r)
        lines.append(n)
    return ReferenceRows(path, samples, picked, lines, meta)
