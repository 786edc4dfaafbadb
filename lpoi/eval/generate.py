"""Answers for the benchmarks: batched, greedy-by-default, resumable generation with a VLM.

Shared by generate@{amber,objhal,mmhal}. What it fixes relative to the official LPOI AMBER script:

* **The stored response excludes the prompt.** The official script decoded the whole sequence
  (prompt + answer) and then cut strings; here the generated ids are sliced after the (left-padded)
  input length and decoded with ``skip_special_tokens=True``, then stripped.
* **Batched with left padding.** All prompts of a batch end at the same column, so the first new
  token of every row is predicted from its own last prompt token; the attention mask hides the pads
  and ``generate`` derives the position ids from it. Greedy batched output equals batch-size-1
  output (tested on the tiny model of every supported family in fp32 with prompts of different
  lengths). In bf16/fp16 on a GPU, a different batch composition can change low-order bits of the
  logits and, rarely, flip a near-tie of the greedy argmax; that is a property of the kernels, not of
  padding.
* **Yes/No by logits** (``yes_no="logits"``), what AMBER's authors did for open models: one forward
  per batch, the answer is whichever of the first tokens of "Yes" and "No" -- as the model emits them
  after its own answer prefix (:func:`lpoi.models.chat.yes_no_token_ids`) -- has the larger next-token
  log-prob at the first answer position. The response is exactly ``"Yes"`` or ``"No"`` (an exact tie,
  which fp32 logits of a real model practically never produce, goes to ``"No"``), and both log-probs
  are stored in the row as ``logprob_yes`` / ``logprob_no``.

Answer rows (``answers.jsonl``, one JSON object per line, in input order)::

    {"id", "question", "response", ...extra}                       # generated
    {"id", "question", "response", "logprob_yes", "logprob_no", ...extra}   # yes_no="logits" items
    {"id", "question", "response", "raw_response", ...extra}       # generated yes/no items, normalize_yes_no given
    {..., "decoded_full", ...}    # generated yes/no items with decoded_full=True (AMBER's paper mode)
    {"id", "question", "response": "", "error", "error_detail", ...extra}    # image could not be used

``...extra`` are the item's other keys copied through (e.g. ``image_id``, ``task``), except the
control keys ``image`` (a path or a PIL image: not stored, so answers do not depend on where the
images live) and ``yes_no``.

**Error rows.** An item whose image cannot be loaded (:func:`lpoi.io.load_image` reasons:
``missing``, ``unreadable``, ``truncated``, ``too_large``, ``too_small``) is never a crash: it gets a
row with ``response: ""`` and ``error: <reason>``, and is counted in the stats (``n_errors``,
``errors``). Scorers must not score such a row as a real answer (an empty description would look
like a perfect, hallucination-free one): they should count rows carrying ``"error"`` separately and
leave them out of the metrics, or fail. Error rows are "finished" for resume; pass
``retry_errors=True`` to drop them from the file and try those items again (e.g. after fixing the
images).

**Resume.** The loop is the per-sample runner's (:mod:`lpoi.runner`): rows are appended one flushed,
fsynced line at a time (a partial last line from a kill is cut off on open; in a stage run, a journal
also rejects rows that are not exactly what was written). Batches are fixed blocks of the input; ids
already in the file are skipped. A partly finished block generates only its unfinished items — a
killed run re-run still produces the same file as an uninterrupted one because greedy generation is
batch-invariant (batched greedy equals batch-1 greedy, tested) — while a partly finished block of
``yes_no="logits"`` items is recomputed whole: their stored log-probs depend on the batch mates in the
last bits (tiny LLaVA, fp32 CPU: up to 5e-7 between batch sizes 1 and 2), and whole blocks keep a
resumed file byte-identical.

**Per-item mode.** One call can mix generative items and yes/no items (AMBER): an item with a truthy
``"yes_no"`` key is a yes/no question; ``yes_no="logits"`` answers those by logits and generates the
others; ``yes_no=None`` (or ``"generate"``, the value of ``amber.discriminative``) generates every
item, and the AMBER scorer parses the first yes/no word later. Batches never mix the two modes: a
batch is cut where the mode changes (AMBER lists generative ids first, so batches stay full).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lpoi.config import GenerateParams, section_of
from lpoi.io import ImageRejected, load_image, read_jsonl, to_rgb, write_jsonl
from lpoi.runner import Runner, StageOutput, Tally, Write, summarize

__all__ = ["AdapterError", "answers_metrics", "answers_tally", "find_adapter", "generate_answers",
           "legacy_adapter_keys", "load_for_generation"]

CONTROL_KEYS = ("id", "question", "image", "yes_no")  # consumed here, not copied into the row
RESERVED_KEYS = ("response", "raw_response", "decoded_full", "error", "error_detail", "logprob_yes",
                 "logprob_no")  # written here
_OWN_GENERATE_KWARGS = ("max_new_tokens", "do_sample", "temperature", "top_p", "num_beams", "pad_token_id")


class AdapterError(RuntimeError):
    """A trained adapter or merged-weights folder that is missing, incomplete or does not fit the base model."""


# =============================================================================== loading


def load_for_generation(
    model_name: str,
    *,
    adapter_dir: str | os.PathLike | None = None,
    merged_dir: str | os.PathLike | None = None,
    dtype: str = "float32",
    device: str | None = None,
    merge: bool = True,
    max_pixels: int | None = None,
    trust_remote_code: bool = False,
):
    """``(model, processor)`` in eval mode: the base model, base + a trained LoRA adapter, or merged weights.

    * neither folder: ``model_name`` alone (:func:`lpoi.models.load_vlm`);
    * ``adapter_dir``: the peft adapter the train stage wrote (``adapter_config.json`` +
      ``adapter_model.safetensors``), loaded onto ``model_name`` with ``PeftModel.from_pretrained``.
      In float32 with ``merge=True`` (default) the LoRA deltas are folded into the base weights
      (``merge_and_unload``) so generation runs at the base model's speed; ``merge=False`` keeps the
      unmerged ``PeftModel`` (same outputs up to float rounding, slower). **In bfloat16/float16 the
      adapter is never merged**: added to half-precision weights, most deltas of a preference run
      (lr ~5e-6) are below half a rounding step and vanish, and the merged model would be the base
      model. Unmerged, the LoRA weights stay float32 (peft's ``autocast_adapter_dtype``) and their
      contribution is added to each layer's output (tested: a bf16 merge returns the base model's
      logits while this path returns the unmerged ``PeftModel``'s, bit for bit);
    * ``merged_dir``: a folder written by ``save_pretrained`` of merged weights (``train.merge``
      writes float32); its processor is taken from the folder when saved there, else from
      ``model_name``. Only in float32: cast to half precision the merged deltas vanish the same way.

    Only safetensors adapters are loaded (no pickle). Every saved adapter tensor must land on a
    module of the base model, otherwise the adapter was trained for another model and we refuse
    (peft alone would only warn and silently generate with the base model).
    """
    from lpoi.models import load_vlm

    if adapter_dir is not None and merged_dir is not None:
        raise ValueError("pass either adapter_dir or merged_dir, not both")
    if merged_dir is not None:
        if dtype != "float32":
            raise AdapterError(
                f"merged weights cast to {dtype} lose the small LoRA deltas (they fall below half a rounding "
                "step); generate from the adapter (kept unmerged in half precision) or with model.dtype: float32"
            )
        return _load_merged(model_name, Path(merged_dir), dtype=dtype, device=device, max_pixels=max_pixels,
                            trust_remote_code=trust_remote_code)
    model, processor = load_vlm(model_name, dtype=dtype, max_pixels=max_pixels, trust_remote_code=trust_remote_code)
    if adapter_dir is not None:
        model = _apply_adapter(model, Path(adapter_dir), merge=merge and dtype == "float32")
    if device:
        model.to(device)
    return model.eval(), processor


def _load_merged(model_name: str, folder: Path, *, dtype: str, device: str | None, max_pixels: int | None = None,
                 trust_remote_code: bool = False):
    from lpoi.models import load_processor, load_vlm, torch_dtype

    if not folder.is_dir():
        raise AdapterError(f"merged model folder not found: {folder} (run the train stage with train.merge: true)")
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise AdapterError(f"{folder} is not a saved model: it needs config.json and *.safetensors weights")
    if any((folder / f).is_file() for f in ("processor_config.json", "preprocessor_config.json")):
        return load_vlm(str(folder), dtype=dtype, device=device, max_pixels=max_pixels,
                        trust_remote_code=trust_remote_code)
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch_dtype(dtype), use_safetensors=True,
                                                        trust_remote_code=trust_remote_code)
    processor = load_processor(model_name, max_pixels=max_pixels, trust_remote_code=trust_remote_code)
    if device:
        model.to(device)
    return model.eval(), processor


def find_adapter(folder: str | os.PathLike) -> Path:
    """The peft adapter folder at or below ``folder`` (``generate.adapter``): ``folder`` itself when it holds
    ``adapter_config.json``, else the single folder below it (at most three levels) that does — a released
    checkpoint unpacks into a folder of its own, whose name nobody can guess. Raises :class:`AdapterError`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise AdapterError(f"generate.adapter: no such folder: {folder}")
    if (folder / "adapter_config.json").is_file():
        return folder
    found = sorted({p.parent for depth in ("*/", "*/*/", "*/*/*/") for p in folder.glob(depth + "adapter_config.json")})
    if len(found) == 1:
        return found[0]
    if not found:
        raise AdapterError(f"generate.adapter: {folder} holds no peft adapter (no adapter_config.json at or below it)")
    raise AdapterError(f"generate.adapter: {folder} holds {len(found)} adapters ({', '.join(map(str, found[:3]))}); "
                       "name the one to evaluate")


def _apply_adapter(model, folder: Path, *, merge: bool):
    from peft import PeftModel
    from peft.utils import get_peft_model_state_dict
    from safetensors import safe_open

    if not folder.is_dir():
        raise AdapterError(f"adapter folder not found: {folder} (run the train stage first, or generate with the base model)")
    cfg_path, weights = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not cfg_path.is_file():
        raise AdapterError(f"{folder} is not a peft adapter: adapter_config.json is missing")
    try:
        json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{cfg_path} is not valid JSON: {e}") from None
    if not weights.is_file():
        extra = " (only safetensors adapters are loaded; adapter_model.bin is a pickle)" if (folder / "adapter_model.bin").exists() else ""
        raise AdapterError(f"adapter weights missing: {weights}{extra}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            saved = set(f.keys())
    except Exception as e:  # noqa: BLE001 - safetensors raises assorted errors on corrupt files
        raise AdapterError(f"cannot read adapter weights {weights}: {type(e).__name__}: {e}") from None
    renamed = legacy_adapter_keys(model, saved)
    if renamed is not None:  # e.g. the LPOI authors' LLaVA adapters (transformers 4.43 module names)
        return _apply_renamed(model, folder, weights, renamed, merge=merge)
    try:
        peft_model = PeftModel.from_pretrained(model, str(folder), is_trainable=False)
    except Exception as e:  # noqa: BLE001 - peft raises ValueError/KeyError/RuntimeError on mismatches
        raise AdapterError(f"cannot load adapter {folder} onto the base model: {type(e).__name__}: {e}") from None
    # save_embedding_layers="auto" (peft's default) would look the base model's name up on the Hub (a request,
    # and two warnings for a local or tiny/ model) to decide whether full embedding matrices belong in the
    # state dict; with True they always do, which can only make `have` larger and this check no stricter
    have = set(get_peft_model_state_dict(peft_model, save_embedding_layers=True).keys())
    unused = sorted(saved - have)
    if unused:
        raise AdapterError(
            f"adapter {folder} does not fit the base model: {len(unused)} of its {len(saved)} tensors have no "
            f"matching module, e.g. {unused[:3]} (was it trained for another model?)"
        )
    if merge:
        return peft_model.merge_and_unload()
    return peft_model


LEGACY_MODULE_NAMES = {
    # transformers < 4.52 nested LLaVA's parts directly under the model; since then they sit in ``model``
    "llava": ((r"^language_model\.model\.", "model.language_model."), (r"^language_model\.lm_head\.", "lm_head."),
              (r"^vision_tower\.", "model.vision_tower."), (r"^multi_modal_projector\.", "model.multi_modal_projector.")),
}
"""Per ``config.model_type``: (old module-path prefix, current one) for adapters saved under older transformers."""
_PEFT_PREFIX = "base_model.model."


def _module_of(key: str) -> str:
    import re

    return re.sub(r"\.(lora_[AB]|lora_embedding_[AB]|lora_magnitude_vector)(\.[^.]+)?(\.weight)?$", "",
                  key.removeprefix(_PEFT_PREFIX))


def legacy_adapter_keys(model, keys) -> dict[str, str] | None:
    """``{saved key: current key}`` when an adapter's LoRA tensors name modules by a layout older transformers
    used (:data:`LEGACY_MODULE_NAMES`) and every one of them lands on a module once renamed; None when the
    keys already fit, or when no known renaming makes them fit (then loading reports the mismatch)."""
    import re

    modules = {name for name, _ in model.named_modules()}
    if all(_module_of(k) in modules for k in keys):
        return None
    rules = LEGACY_MODULE_NAMES.get(getattr(model.config, "model_type", None), ())
    out = {}
    for k in keys:
        rest = k.removeprefix(_PEFT_PREFIX)
        for old, new in rules:
            if re.match(old, rest):
                rest = re.sub(old, new, rest, count=1)
                break
        out[k] = _PEFT_PREFIX + rest
    return out if rules and all(_module_of(v) in modules for v in out.values()) else None


def _apply_renamed(model, folder: Path, weights: Path, renamed: dict[str, str], *, merge: bool):
    """Load an adapter whose keys :func:`legacy_adapter_keys` renamed, from a renamed copy (the folder is left as is)."""
    import shutil
    import tempfile

    from safetensors.torch import load_file, save_file

    tensors = load_file(str(weights))
    with tempfile.TemporaryDirectory(prefix="lpoi-adapter-") as tmp:
        shutil.copyfile(folder / "adapter_config.json", Path(tmp) / "adapter_config.json")
        save_file({renamed[k]: v for k, v in tensors.items()}, str(Path(tmp) / "adapter_model.safetensors"),
                  metadata={"format": "pt"})
        print(f"[generate] {folder}: {len(renamed)} adapter tensors renamed from an older transformers layout "
              f"({getattr(model.config, 'model_type', '?')})", flush=True)
        return _apply_adapter(model, Path(tmp), merge=merge)


# =============================================================================== generation


def generate_answers(
    model,
    processor,
    items: Iterable[dict],
    out_path: str | os.PathLike,
    params: GenerateParams | None = None,
    *,
    limit: int | None = None,
    yes_no: str | None = None,
    id_key: str = "id",
    progress: bool = True,
    extra_generate_kwargs: dict | None = None,
    retry_errors: bool = False,
    normalize_yes_no=None,
    journal: bool = False,
    decoded_full: bool = False,
    **settings: Any,
) -> dict[str, Any]:
    """Answer ``items`` into ``out_path`` (append-only JSONL, resumable); return throughput stats.

    ``params``: the ``generate`` section (``batch_size``, ``max_new_tokens``, ``do_sample``, ``temperature``,
    ``top_p``, ``num_beams``); without it, those settings as keywords, validated the same way
    (:func:`lpoi.config.section_of`).

    ``items``: dicts ``{"id", "image": path | PIL.Image, "question", ["yes_no": bool], ...extra}``
    (``id_key`` names the id field). ``limit``: only the first N items (done or not). Decoding:
    greedy by default (``do_sample=False`` and ``pad_token_id`` are always passed explicitly);
    ``temperature``/``top_p`` only when given; anything else (``min_new_tokens``,
    ``repetition_penalty``, ...) through ``extra_generate_kwargs``. See the module docstring for the
    row format, error rows, resume and ``yes_no``. ``normalize_yes_no(row)`` (e.g.
    :func:`lpoi.eval.benchmarks.amber.answer_row_normalizer`) is applied to the row of every yes/no
    item answered by generation before it is written (it keeps the raw reply as ``raw_response``).
    ``decoded_full``: those rows also keep ``decoded_full``, the prompt's and the generated ids (up to the
    first end-of-sequence) decoded together with ``skip_special_tokens=True`` -- the text the official LPOI
    AMBER script stored (``processor.batch_decode(generated_ids, skip_special_tokens=True)[0]``, batch 1,
    so no padding: the left pads are left out here).

    Stats: ``n_items`` (items considered), ``n_generated`` (rows answered by the model in this call,
    both modes), ``n_logits`` (of which by yes/no logits), ``n_errors`` + ``errors`` (per reason),
    ``n_skipped`` (already in the file), ``n_new_tokens`` (generated tokens up to and including the
    first end-of-sequence), ``seconds`` (wall time of the call), ``samples_per_s``,
    ``new_tokens_per_s``, ``batch_size``; the stage's metrics over the whole file under ``"output"``
    (:func:`answers_metrics`). The loop is the per-sample runner's (:mod:`lpoi.runner`: images load on a
    prefetch thread; a resumed block generates only its unfinished items; ``journal`` as in
    :class:`lpoi.runner.StageOutput`).
    """
    g = section_of(GenerateParams, params, settings)
    batch_size, max_new_tokens, do_sample = g.batch_size, g.max_new_tokens, g.do_sample
    temperature, top_p, num_beams = g.temperature, g.top_p, g.num_beams
    if limit is not None:
        _check_int("limit", limit, 0)
    if yes_no not in (None, "generate", "logits"):
        raise ValueError(f"yes_no must be None, 'generate' or 'logits', got {yes_no!r}")
    gen_kwargs = _generate_kwargs(model, processor, max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  temperature=temperature, top_p=top_p, num_beams=num_beams, extra=extra_generate_kwargs)
    out_path = Path(out_path)
    if retry_errors and out_path.exists():
        rows = list(read_jsonl(out_path))
        kept = [r for r in rows if "error" not in r]
        if len(kept) != len(rows):
            write_jsonl(out_path, kept)

    job = _AnswerJob(model, processor, gen_kwargs, _eos_ids(model, gen_kwargs.get("eos_token_id")), id_key,
                     normalize_yes_no, decoded_full)
    with StageOutput(out_path, None, key=id_key, journal=journal) as out:
        # greedy text is batch-invariant, so a resumed block generates only its unfinished items; the
        # log-probs of yes/no items are floats that depend (in their last bits) on the batch mates, so
        # their blocks are recomputed whole and a resumed run writes the same bytes
        runner = Runner(out, batch_size, whole=lambda block: block[0]["mode"] == "logits", cut=lambda w: w["mode"],
                        progress=progress,
                        desc=f"generate {out_path.parent.name or ''}".strip(), tally=answers_tally())
        st = runner.run(_work(items, limit, id_key, yes_no), job.load, job.process, total=_total(items, limit))
    secs = st["seconds"]
    return {"n_items": st["skipped"] + st["written"], "n_generated": st["n_generated"], "n_logits": st["n_logits"],
            "n_errors": st["n_errors"], "errors": st["errors"], "n_skipped": st["skipped"], "resumed": st["resumed"],
            "unverified": st["unverified"], "n_new_tokens": st["n_new_tokens"], "seconds": secs,
            "samples_per_s": st["n_generated"] / secs if secs > 0 else 0.0,
            "new_tokens_per_s": st["n_new_tokens"] / secs if secs > 0 else 0.0, "batch_size": batch_size,
            "output": answers_metrics(out.out_path)}


def _generate_kwargs(model, processor, *, max_new_tokens, do_sample, temperature, top_p, num_beams, extra) -> dict:
    """The ``generate`` keyword arguments: greedy unless asked, the pad id always explicit."""
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("num_beams", num_beams, 1)
    extra_kw = dict(extra or {})
    clash = sorted(set(extra_kw) & set(_OWN_GENERATE_KWARGS))
    if clash:
        raise ValueError(f"extra_generate_kwargs must not repeat the explicit arguments: {clash}")
    kw = {"max_new_tokens": max_new_tokens, "do_sample": bool(do_sample), "num_beams": num_beams,
          "pad_token_id": _pad_id(processor, model), **extra_kw}
    if temperature is not None:
        kw["temperature"] = temperature
    if top_p is not None:
        kw["top_p"] = top_p
    return kw


class _AnswerJob:
    """The generate stage's two halves for the runner: load a block's images, answer a block."""

    def __init__(self, model, processor, gen_kwargs: dict, eos_ids: set[int], id_key: str, normalize_yes_no=None,
                 decoded_full: bool = False):
        self.model, self.processor, self.gen_kwargs, self.eos_ids, self.id_key = model, processor, gen_kwargs, eos_ids, id_key
        self.normalize_yes_no = normalize_yes_no  # a generated yes/no reply -> the stored answer (raw kept)
        self.decoded_full = decoded_full
        self._yes_no_ids: tuple[int, int] | None = None  # read at the first logits block (a template's
        # error -- "Yes" merging with the prompt -- concerns the logits mode only)

    def yes_no_ids(self) -> tuple[int, int]:
        """The answer tokens of the logits mode (:func:`lpoi.models.chat.yes_no_token_ids`), once per job."""
        if self._yes_no_ids is None:
            from lpoi.models.chat import yes_no_token_ids

            self._yes_no_ids = yes_no_token_ids(self.processor)
        return self._yes_no_ids

    def load(self, block: list[dict]) -> list[dict]:
        """Prefetch thread: each item's answer row, with its image when usable (an error row otherwise)."""
        rows = []
        for w in block:
            row = _row(w["item"], w[self.id_key], w["question"], self.id_key)
            try:
                row["_image"] = _image(w["item"].get("image"), w["k"], w[self.id_key])
            except ImageRejected as e:
                row.update(response="", error=e.reason, error_detail=e.detail)
            rows.append(row)
        return rows

    def process(self, rows: list[dict], block: list[dict]) -> list[Write]:
        """One mode per block (the runner cuts blocks where it changes): logits or generation."""
        todo = [r for r in rows if "_image" in r]
        tokens = [0] * len(todo)
        if todo and block[0]["mode"] == "logits":
            _answer_by_logits(self.model, self.processor, todo, self.yes_no_ids())
        elif todo:
            full = [self.decoded_full and bool(w["item"].get("yes_no")) for r, w in zip(rows, block) if "_image" in r]
            tokens = _answer_by_generate(self.model, self.processor, todo, self.gen_kwargs, self.eos_ids, full)
        n_new = {id(r): n for r, n in zip(todo, tokens)}
        for r, w in zip(rows, block):
            r.pop("_image", None)
            if self.normalize_yes_no is not None and w["mode"] == "generate" and w["item"].get("yes_no"):
                self.normalize_yes_no(r)
        return [Write(r, counts={"n_new_tokens": n_new.get(id(r), 0)}) for r in rows]


def _work(items: Iterable[dict], limit: int | None, id_key: str, yes_no: str | None) -> Iterator[dict]:
    """The runner's rows: each item checked (no duplicate ids), with its answer mode."""
    seen: set = set()
    for k, item in enumerate(items):
        if limit is not None and k >= limit:
            break
        item_id, question = _check_item(item, k, id_key)
        key = json.dumps(item_id, sort_keys=True) if isinstance(item_id, (list, dict)) else item_id
        if key in seen:
            raise ValueError(f"item {k}: {id_key} {item_id!r} appears twice in the input")
        seen.add(key)
        mode = "logits" if yes_no == "logits" and item.get("yes_no") else "generate"
        yield {id_key: item_id, "question": question, "item": item, "k": k, "mode": mode}


def _count_answer(row: dict) -> dict[str, Any]:
    err = row.get("error")
    return {"n_generated": int(err is None), "n_logits": int("logprob_yes" in row), "n_errors": int(err is not None),
            "errors": {err: 1} if err is not None else {}}


def answers_tally() -> Tally:
    return Tally(_count_answer, zero={"n_generated": 0, "n_logits": 0, "n_errors": 0, "errors": {}, "n_new_tokens": 0})


def answers_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """The generate stage's metrics over a whole answers file: answers, answered by logits, error rows."""
    c = summarize(path, None, answers_tally())
    return {"n_answers": c["written"], "n_logits": c["n_logits"], "n_errors": c["n_errors"],
            "errors": dict(sorted(c["errors"].items()))}


def _answer_by_generate(model, processor, rows: list[dict], gen_kwargs: dict, eos_ids: set[int],
                        full: list[bool] | None = None) -> list[int]:
    """Fill ``response`` of each row by batched generation (and ``decoded_full`` where ``full``); return
    each row's number of new tokens."""
    import torch

    from lpoi.models.chat import tokenizer_of

    enc = _encode(model, processor, rows)
    with torch.inference_mode():
        out = model.generate(**enc, **gen_kwargs)
    width = enc["input_ids"].shape[1]
    new = out[:, width:].cpu()  # left padding: every prompt ends at column `width`
    tok = tokenizer_of(processor)
    n_tokens = []
    prompt_lengths = enc["attention_mask"].sum(-1).tolist()
    for i, (r, ids) in enumerate(zip(rows, new.tolist())):
        r["response"] = tok.decode(ids, skip_special_tokens=True).strip()
        n = _n_until_eos(ids, eos_ids)
        n_tokens.append(n)
        if full and full[i]:  # the prompt's own ids (pads cut off) + the reply up to its end-of-sequence
            prompt = enc["input_ids"][i, width - int(prompt_lengths[i]):].tolist()
            r["decoded_full"] = tok.decode(prompt + ids[:n], skip_special_tokens=True)
    return n_tokens


def _answer_by_logits(model, processor, rows: list[dict], yes_no_ids: tuple[int, int]) -> None:
    """Fill ``response`` ("Yes"/"No") and the two log-probs from one forward at the first answer position."""
    import torch

    from lpoi.models.logits import last_logits

    yes_id, no_id = yes_no_ids
    enc = _encode(model, processor, rows)
    with torch.inference_mode():
        logits = last_logits(model, enc)  # left padding: column -1 is every row's last prompt token
    logp = torch.log_softmax(logits.float(), dim=-1).cpu()
    for r, lp in zip(rows, logp):
        ly, ln = float(lp[yes_id]), float(lp[no_id])
        r["response"] = "Yes" if ly > ln else "No"
        r["logprob_yes"], r["logprob_no"] = ly, ln


def _encode(model, processor, rows: list[dict]):
    from lpoi.models.chat import encode_prompts, prompt_text

    prompts = [prompt_text(processor, r["question"]) for r in rows]
    enc = encode_prompts(processor, prompts, [r["_image"] for r in rows], padding_side="left")
    device, dtype = _device_dtype(model)
    return {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if hasattr(v, "to") else v
            for k, v in enc.items()}


# =============================================================================== helpers


def _check_int(name: str, value: Any, lo: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")


def _check_item(item: Any, k: int, id_key: str) -> tuple[Any, str]:
    if not isinstance(item, dict):
        raise TypeError(f"item {k}: expected a dict with {id_key!r}, 'image' and 'question', got {type(item).__name__}")
    if id_key not in item or item[id_key] is None or isinstance(item[id_key], (bool, float)):
        raise ValueError(f"item {k}: {id_key!r} must be an int or a string, got {item.get(id_key)!r}")
    q = item.get("question")
    if not isinstance(q, str) or not q.strip():
        raise ValueError(f"item {k} ({id_key} {item[id_key]!r}): 'question' must be a non-empty string, got {q!r}")
    return item[id_key], q


def _row(item: dict, item_id: Any, question: str, id_key: str) -> dict:
    row = {id_key: item_id, "question": question}
    for key, value in item.items():
        if key in CONTROL_KEYS or key == id_key:
            continue
        if key in RESERVED_KEYS:
            raise ValueError(f"item {id_key} {item_id!r}: key {key!r} is written by the generator, rename it")
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ValueError(
                f"item {id_key} {item_id!r}: extra key {key!r} is not JSON-serialisable ({type(value).__name__})"
            ) from None
        row[key] = value
    return row


def _image(image: Any, k: int, item_id: Any):
    """PIL RGB image from a path (validated by :func:`lpoi.io.load_image`) or a PIL image."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image)
    if hasattr(image, "mode") and hasattr(image, "size"):  # a PIL image (e.g. decoded from base64)
        return to_rgb(image)
    raise TypeError(f"item {k} (id {item_id!r}): 'image' must be a path or a PIL image, got {type(image).__name__}")


def _pad_id(processor, model) -> int:
    from lpoi.models.chat import tokenizer_of

    tok = tokenizer_of(processor)
    for v in (tok.pad_token_id, getattr(model.generation_config, "pad_token_id", None), tok.eos_token_id):
        if isinstance(v, int):
            return v
    raise ValueError(f"{type(tok).__name__} has no pad or eos token; batched generation needs one")


def _eos_ids(model, override: Any = None) -> set[int]:
    eos = override if override is not None else getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def _n_until_eos(ids: list[int], eos_ids: set[int]) -> int:
    for j, t in enumerate(ids):
        if t in eos_ids:
            return j + 1
    return len(ids)


def _device_dtype(model):
    import torch

    p = next(model.parameters(), None)
    if p is None:
        return torch.device("cpu"), torch.float32
    dtype = getattr(model, "dtype", p.dtype)
    return p.device, dtype if dtype.is_floating_point else torch.float32


def _total(items: Iterable[dict], limit: int | None) -> int | None:
    try:
        n = len(items)  # type: ignore[arg-type]
    except TypeError:
        return limit
    return n if limit is None else min(n, limit)
