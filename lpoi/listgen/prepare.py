"""The ``prepare`` stage: validate pairwise preference records before any model sees them.

Input is the LPOI/mDPO schema (``sample_10k_llava.json``, HF ``fwnlp/mDPO-preference-data``): a JSON
list or JSONL of ``{"img_path", "prompt", "chosen", "rejected"}`` with an optional ``"id"``.
Every record ends up either in ``prepared.jsonl`` or in ``rejects.jsonl`` with a machine-readable
reason — nothing is dropped silently (the official LPOI release shipped no such step; mDPO's loader
skipped unreadable images with a bare ``except``).

Checks, in order (the first failing one is the reject ``reason``):

========================  =====================================================================
``not_an_object``         the record is not a JSON object
``missing_field``         one of img_path/prompt/chosen/rejected is absent (or null)
``bad_type``              a field (or the optional id) is not a string (id: string or integer)
``invalid_unicode``       a field or the id holds a lone surrogate (``"\\ud800"`` in the JSON): not
                          text, and no later stage could write it as UTF-8
``control_character``     prompt, chosen, rejected or the id holds a control character (Unicode Cc:
                          NUL, ESC, U+0085, ...) other than tab, line feed and carriage return
``empty_field``           a field is empty after normalising the text (below) and removing placeholders,
                          or holds nothing visible: only whitespace and combining marks with no base
``text_too_long``         the prompt has more than ``max_prompt_chars`` characters, or chosen/rejected
                          more than ``max_answer_chars`` (verify does not truncate)
``no_preference``         chosen and rejected are the same text after normalising (up to whitespace)
``unsafe_path``           img_path is absolute, contains ``..``, or resolves (symlinks) outside the root
``missing_image``         no such file under the images root
``duplicate_record``      same image bytes + prompt + chosen + rejected as an accepted record
``duplicate_id``          the id (given and normalised, or derived) was already used by an accepted record
``unreadable_image``      not an image PIL can decode
``truncated_image``       the file ends before the image data does (full decode, no LOAD_TRUNCATED_IMAGES)
``corrupt_image``         the decoder meets data it cannot decode, or (JPEG) reports corrupt
                          entropy-coded data it papered over (:func:`lpoi.io.check_image_integrity`)
``bad_checksum``          a PNG chunk's CRC does not match its data
``too_large``             more than ``max_pixels`` (decompression bombs); read from the header, before decoding
``too_small``             a side under ``min_side`` px (after EXIF orientation)
``extreme_aspect_ratio``  long side / short side above ``max_aspect_ratio`` (the detector and SAM
                          processors fail on such strips; see :class:`lpoi.config.PrepareParams`)
``prompt_too_long``       with a :class:`PromptBudget`: the prompt, in the base model's tokens with its
                          image's, leaves no room for an answer within ``reference.max_length``
                          (reference and train would stop on it)
========================  =====================================================================

Every reject row carries the record's ``index`` (0-based input position) and its ``id``: the given one
(as given, lone surrogates written as ``\\udXXX`` escapes) whenever the record has one of a valid type, else
the derived one once the image bytes are known, else null.

Text normalisation (:func:`normalise_text`), before any other text check, so that no two texts that read the
same count as different (a preference pair that differs only by a zero-width space teaches nothing, and an
answer of zero-width spaces is no answer): prompt, chosen, rejected and the id are put in Unicode NFC
(composed: "e" + U+0301 and "é" are one text), and format characters (Unicode Cf: zero-width space/joiners
U+200B..U+200D, word joiner U+2060, BOM U+FEFF, soft hyphen, bidi marks, tag characters) are removed —
ZWJ/ZWNJ included, so emoji ZWJ sequences fall apart into their emoji and Persian/Indic ZWNJ spellings
join; the 13 Cf characters that are drawn (Prepended_Concatenation_Mark: Arabic number signs U+0600..U+0605
and the like) stay.
Tab, line feed and carriage return are kept as they are (the texts are compared up to whitespace anyway);
any other control character rejects the record (``control_character``): it is a sign of a broken export,
and removing it could join two words. ``img_path`` is not normalised (file names are byte strings),
only checked for lone surrogates. Records whose texts changed this way are counted in ``texts_normalised``.

``<image>`` placeholders (LLaVA-format data puts ``<image>\n`` before most questions) are removed from
the prompt and both answers, once, here: every later stage places the image through the model's chat
template, and a stray ``<image>`` makes the processor count two images for one (reference and train
stop). A placeholder is removed with the spaces and the one line break around it; the text is then
stripped. Records changed this way are counted in ``placeholders_removed``.

Stable ids: a given id is kept, normalised (integers are string-ified); otherwise the id is the first 16
hex digits of :func:`content_key`, the sha256 of the JSON array ``["prepare-key-v2", image_sha256, prompt,
chosen, rejected]`` (the texts after normalisation and placeholder removal, as later stages see them; the
image's hex sha256 of its file bytes) — the same record always gets the same id, wherever it sits in the
file. The full digest is the duplicate-record key. (v1 joined the fields with NUL, so ``"a\\0b", "c"`` and
``"a", "b\\0c"`` had one key; the format's tag is hashed with the fields, so a later format starts afresh.)

Pixels for later stages: every stage must see 8-bit RGB with the EXIF orientation applied. When the
source already *is* that (mode RGB, no EXIF orientation other than 1), ``image_path`` points at the source
file and no copy is made (the common case: the mDPO/LLaVA data are plain RGB JPEGs, and copying 10k of
them would double the disk use). Otherwise (palette, LA/RGBA, CMYK, 16-bit, grayscale, rotated JPEGs) a
lossless normalised PNG is written to ``out_dir_images/<id>.png`` and ``image_path`` points at it, so any
later reader — ``PIL.Image.open(...).convert("RGB")`` or :func:`lpoi.io.load_image` — gets the same pixels.
``image`` keeps the relative source path for provenance. Paths are joined to the roots exactly as the
caller passed them (not resolved), so a pipeline run from the repo root with relative roots writes a
location-independent ``prepared.jsonl``; confinement is checked on the resolved path.

Memory: records are streamed; only the sets of accepted ids and duplicate keys are kept (O(N) short
strings). :func:`lpoi.io.read_records` parses a JSON *list* file in one go (the JSON list format cannot be
streamed with the standard library); use JSONL for very large inputs.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

from lpoi.config import PrepareParams
from lpoi.io import (
    ImageRejected,
    InputError,
    UnsafePathError,
    atomic_open,
    atomic_write_bytes,
    check_image_integrity,
    decode_image,
    finish_image,
    read_records,
    safe_join,
    sha256_file,
)

__all__ = [
    "PromptBudget",
    "REJECT_REASONS",
    "REQUIRED_FIELDS",
    "RejectRatioExceeded",
    "content_key",
    "encode_png",
    "normalise_text",
    "prepare_records",
    "prepare_summary_line",
    "run_prepare",
    "safe_stem",
    "strip_placeholders",
]

log = logging.getLogger(__name__)

REQUIRED_FIELDS = ("img_path", "prompt", "chosen", "rejected")
REJECT_REASONS = (
    "not_an_object",
    "missing_field",
    "bad_type",
    "invalid_unicode",
    "control_character",
    "empty_field",
    "text_too_long",
    "no_preference",
    "unsafe_path",
    "missing_image",
    "duplicate_record",
    "duplicate_id",
    "unreadable_image",
    "truncated_image",
    "corrupt_image",
    "bad_checksum",
    "too_large",
    "too_small",
    "extreme_aspect_ratio",
    "prompt_too_long",
)
# lpoi.io.load_image's reasons -> this stage's reject codes
_IMAGE_REASON = {
    "missing": "missing_image",
    "unreadable": "unreadable_image",
    "truncated": "truncated_image",
    "corrupt": "corrupt_image",
    "bad_checksum": "bad_checksum",
    "too_large": "too_large",
    "too_small": "too_small",
}
_SAFE_STEM = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_EXIF_ORIENTATION = 0x0112
# "<image>" with the spaces/tabs around it and at most one line break after it
_PLACEHOLDER = re.compile(r"[ \t]*<image>[ \t]*(?:\r?\n)?", re.IGNORECASE)
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")  # Unicode Cc less tab, LF, CR
# Cf characters that are drawn (Prepended_Concatenation_Mark): removing them would change what the text says
_VISIBLE_FORMAT = frozenset(map(chr, (*range(0x600, 0x606), 0x6DD, 0x70F, 0x890, 0x891, 0x8E2, 0x110BD,
                                      0x110CD)))
_KEY_VERSION = "prepare-key-v2"


class RejectRatioExceeded(RuntimeError):
    """More records were rejected than ``prepare.max_reject_ratio`` allows, or none was accepted (raised
    after writing both files)."""


class _Reject(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# ---------------------------------------------------------------------------------------------- helpers


def safe_stem(sample_id: str) -> str:
    """A file-name stem for a sample id: the id itself when it is a plain name, else ``id-<sha256[:16]>``.

    Ids come from user data (``"a/b"``, ``".."``, 300 characters...) and must never become paths.

    >>> safe_stem("000123"), safe_stem("../x")[:3]
    ('000123', 'id-')
    """
    if _SAFE_STEM.fullmatch(sample_id):
        return sample_id
    return "id-" + hashlib.sha256(sample_id.encode("utf-8")).hexdigest()[:16]


def content_key(image_sha256: str, prompt: str, chosen: str, rejected: str) -> str:
    """Full hex digest identifying a record by content (duplicate key; its first 16 hex = derived id).

    The fields go in as one JSON array, so no choice of texts can make two different records hash the
    same bytes (a separator can occur inside a field; JSON escapes it).

    >>> content_key("ab", "q", "a\\0b", "c") != content_key("ab", "q", "a", "b\\0c")
    True
    """
    blob = json.dumps([_KEY_VERSION, image_sha256, prompt, chosen, rejected], ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


@cache
def _format_chars() -> re.Pattern:
    """Every Cf character of this Python's Unicode database but the visible ones (~0.3 s, once), as a class
    of ranges (7x faster to match than the same class listed one character at a time)."""
    runs: list[list[int]] = []
    for c in range(0x110000):
        if unicodedata.category(chr(c)) == "Cf" and chr(c) not in _VISIBLE_FORMAT:
            if runs and runs[-1][1] == c - 1:
                runs[-1][1] = c
            else:
                runs.append([c, c])
    return re.compile("[" + "".join(re.escape(chr(a)) + ("-" + re.escape(chr(b)) if b > a else "")
                                    for a, b in runs) + "]")


def _escape_surrogates(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def normalise_text(text: str, name: str = "text") -> str:
    r"""``text`` in NFC without format characters (Unicode Cf), as every later stage sees it; a reject
    ``invalid_unicode`` for a lone surrogate, ``control_character`` for a control character other than
    tab, line feed and carriage return (see the module docstring). ``name`` is the field, for the detail.

    >>> normalise_text("Café​!﻿")
    'Café!'
    """
    if m := _SURROGATE.search(text):
        raise _Reject("invalid_unicode", f"{name} holds a lone surrogate U+{ord(m.group()):04X} at character "
                                         f"{m.start()} (not valid Unicode; a broken \\u escape in the JSON?)")
    if m := _CONTROL.search(text):
        raise _Reject("control_character", f"{name} holds the control character U+{ord(m.group()):04X} at "
                                           f"character {m.start()} (only tab, line feed and carriage return "
                                           "are allowed in a text)")
    if text.isascii():  # the common case: nothing below can change it
        return text
    return _format_chars().sub("", unicodedata.normalize("NFC", text))


def _visible(text: str) -> bool:
    """True when ``text`` has a character other than whitespace and combining marks (Mn/Mc/Me): a text
    of lone accents or variation selectors shows nothing a model could learn from."""
    return any(not c.isspace() and not unicodedata.category(c).startswith("M") for c in text)


def encode_png(img, compress_level: int = 6) -> bytes:
    """Lossless PNG bytes with no metadata (no text/time/ICC chunks): same pixels -> same bytes.

    The image is rebuilt from its pixel array so nothing from ``img.info`` (ICC profile, EXIF, dpi)
    leaks into the file.
    """
    import numpy as np
    from PIL import Image

    clean = Image.fromarray(np.asarray(img))
    buf = io.BytesIO()
    clean.save(buf, format="PNG", compress_level=compress_level, optimize=False)
    return buf.getvalue()


def _needs_normalising(decoded) -> bool:
    """True unless the source file (``decoded`` by :func:`lpoi.io.decode_image`, as stored) decodes straight
    to RGB with no EXIF rotation/flip. Nothing is read again: the EXIF of a decoded PNG includes an eXIf
    chunk after the image data."""
    if decoded.mode != "RGB":
        return True
    return decoded.getexif().get(_EXIF_ORIENTATION, 1) not in (1, None)


def image_candidates(rel: str) -> list[str]:
    """Where ``img_path`` may sit under an images root, in order: as given; below its last ``images/`` folder
    (LPOI's ``lpoi.py`` opens ``data/images/<x>`` from the repo root and maps it with
    ``str.replace("images", ...)``); by its basename (mDPO writes ``images/<id>.jpg``, others ``<id>.jpg``)."""
    parts = PurePosixPath(_norm_rel(rel)).parts
    out = ["/".join(parts)]
    if "images" in parts[:-1]:
        last = len(parts) - 1 - parts[::-1].index("images")
        out.append("/".join(parts[last + 1:]))
    out.append(parts[-1] if parts else "")
    return list(dict.fromkeys(c for c in out if c))


def _resolve_image(root: Path, rel: str) -> Path | None:
    """The first of :func:`image_candidates` that is a file under ``root`` (symlinks may not lead out)."""
    path = root / rel  # as the caller gave the root: relative roots stay relative
    if path.is_file():
        return path
    for cand in image_candidates(rel)[1:]:
        try:
            safe_join(root, cand)
        except UnsafePathError:
            continue
        if (root / cand).is_file():
            return root / cand
    return None


def _norm_rel(rel: str) -> str:
    return Path(rel).as_posix()


def strip_placeholders(text: str) -> str:
    r"""``text`` without ``<image>`` placeholders (any case); unchanged when it holds none.

    >>> strip_placeholders("<image>\nWhat is this?"), strip_placeholders("Look at <image> closely.")
    ('What is this?', 'Look at closely.')
    """
    if "<" not in text or not _PLACEHOLDER.search(text):
        return text

    def repl(m: re.Match) -> str:  # a space only where the placeholder sat between two words of a line
        before = m.string[m.start() - 1] if m.start() else "\n"
        after = m.string[m.end()] if m.end() < len(m.string) else "\n"
        return " " if not (before.isspace() or after.isspace()) else ""

    return _PLACEHOLDER.sub(repl, text).strip()


def _given_id(rec: Any) -> str | None:
    """The id as given (string-ified), for reject rows: ``None`` when absent or of a bad type."""
    if not isinstance(rec, dict) or rec.get("id") is None:
        return None
    v = rec["id"]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        return None
    return _escape_surrogates(str(v))


def _check_id(rec: Any) -> str | None:
    """The given id, normalised like the texts (ids differing only by invisible characters are one id)."""
    if not isinstance(rec, dict) or rec.get("id") is None:
        return None
    v = rec["id"]
    if isinstance(v, bool) or not isinstance(v, (str, int)):
        raise _Reject("bad_type", f"id must be a string or an integer, got {type(v).__name__}")
    s = normalise_text(str(v), "id")
    if not s.strip():
        raise _Reject("empty_field", "empty field(s) (after normalising the text): id")
    return s


def _check_fields(rec: Any) -> tuple[dict[str, str], dict[str, str]]:
    """``(fields, texts)``: the four fields as later stages see them, and prompt/chosen/rejected normalised
    but with their placeholders (to tell what each step changed)."""
    if not isinstance(rec, dict):
        raise _Reject("not_an_object", f"expected a JSON object, got {type(rec).__name__}")
    missing = [k for k in REQUIRED_FIELDS if rec.get(k) is None]
    if missing:
        raise _Reject("missing_field", f"missing field(s): {', '.join(missing)}")
    bad = [f"{k} ({type(rec[k]).__name__})" for k in REQUIRED_FIELDS if not isinstance(rec[k], str)]
    if bad:
        raise _Reject("bad_type", f"field(s) must be strings: {', '.join(bad)}")
    if m := _SURROGATE.search(rec["img_path"]):
        raise _Reject("invalid_unicode", f"img_path holds a lone surrogate U+{ord(m.group()):04X} at "
                                         f"character {m.start()} (not valid Unicode; a broken \\u escape in "
                                         "the JSON?)")
    # normalised before the placeholders go: "<im\u200bage>" is a placeholder too
    texts = {k: normalise_text(rec[k], k) for k in REQUIRED_FIELDS if k != "img_path"}
    fields = {"img_path": rec["img_path"], **{k: strip_placeholders(v) for k, v in texts.items()}}
    empty = [k for k in REQUIRED_FIELDS if not fields[k].strip()]
    if empty:
        raise _Reject("empty_field", "empty field(s) (after normalising the text and removing placeholders): "
                                     + ", ".join(empty))
    blank = [k for k in REQUIRED_FIELDS if k != "img_path" and not _visible(fields[k])]
    if blank:
        raise _Reject("empty_field", f"nothing visible in field(s) {', '.join(blank)}: only whitespace and "
                                     "combining marks with no base character")
    return fields, texts


def _check_text(fields: dict[str, str], p: PrepareParams) -> None:
    for key, limit, name in (("prompt", p.max_prompt_chars, "max_prompt_chars"),
                             ("chosen", p.max_answer_chars, "max_answer_chars"),
                             ("rejected", p.max_answer_chars, "max_answer_chars")):
        if len(fields[key]) > limit:
            raise _Reject("text_too_long", f"{key} has {len(fields[key])} characters, more than "
                                           f"prepare.{name} = {limit}")
    if fields["chosen"].split() == fields["rejected"].split():
        raise _Reject("no_preference", "chosen and rejected are the same text (after normalising it, up to "
                                        "whitespace)")


def _check_image(path: Path, p: PrepareParams):
    """``(image, needs_normalising)``: the 8-bit RGB image as :func:`lpoi.io.load_image` gives it, and
    whether the source is not that already; or a reject (decoder errors, integrity, size, shape). The file
    is decoded once (the JPEG integrity check decodes it once more, with OpenCV)."""
    try:
        decoded = decode_image(path, max_pixels=p.max_pixels)
        needs = _needs_normalising(decoded)
        img = finish_image(decoded, min_side=p.min_side)
        check_image_integrity(path, fmt=decoded.format)
    except ImageRejected as e:
        raise _Reject(_IMAGE_REASON.get(e.reason, "unreadable_image"), e.detail) from None
    w, h = img.size
    if max(w, h) / min(w, h) > p.max_aspect_ratio:
        raise _Reject("extreme_aspect_ratio", f"{w}x{h}: aspect ratio {max(w, h) / min(w, h):.4g} exceeds "
                                              f"prepare.max_aspect_ratio = {p.max_aspect_ratio:g}")
    return img, needs


class PromptBudget:
    """A prompt's length in the base model's tokens as reference and train encode it: the chat template with
    one image, the image's tokens included (:func:`lpoi.models.chat.prompt_text`, then the processor).

    A character bound cannot promise the prompt fits ``reference.max_length`` (English runs ~3 characters
    per token with the tiny tokenizers, random text ~1), and a prompt that leaves no room for a single
    answer token stops the whole reference stage. So every prompt goes through the processor itself, with
    a blank image (the text path is the processors' own: Idefics2's, for one, also inserts a space after
    the image). Idefics2's image processor scales even a blank image to 980 px (~80 ms a call), so a small
    processing ``size`` is passed where it leaves the ids unchanged: checked at start-up against the
    processor as configured, on two prompts and two image sizes (a processor whose count follows the
    processed size fails the check and runs as configured). When the count depends on the image size, the
    blank image has the record's size.
    """

    _PROBES = ("", "What is there?")
    _SMALL = ({"size": {"longest_edge": 16, "shortest_edge": 16}}, {"size": {"shortest_edge": 16}})

    def __init__(self, processor, max_length: int, model_name: str = "the base model"):
        self.max_length, self.model_name = int(max_length), model_name
        self._processor = processor
        self._kwargs: dict | None = None  # set by _probe on first use
        self.fixed = True

    @classmethod
    def for_model(cls, name: str, max_length: int, trust_remote_code: bool = False,
                  max_pixels: int | None = None) -> PromptBudget:
        """The budget of a model by name; its processor is loaded on the first prompt (a bad input file
        fails at once, without loading a model), as reference and train load it: with the resolution
        budget ``model.max_pixels``, which sets the image's token count of Qwen-VL and SmolVLM."""
        from lpoi.models import load_processor

        return cls(lambda: load_processor(name, max_pixels=max_pixels, trust_remote_code=trust_remote_code),
                   max_length, name)

    @property
    def processor(self):
        if not hasattr(self._processor, "apply_chat_template"):  # the loader of for_model
            self._processor = self._processor()
        return self._processor

    def _probe(self) -> None:
        plain = {(q, sz): self._ids(q, sz, {}) for q in self._PROBES for sz in ((32, 32), (96, 40))}
        self.fixed = all(plain[(q, (32, 32))] == plain[(q, (96, 40))] for q in self._PROBES)
        self._kwargs = {}
        for kw in self._SMALL:
            try:
                if all(self._ids(q, sz, kw) == ids for (q, sz), ids in plain.items()):
                    self._kwargs = kw
                    break
            except Exception:  # noqa: BLE001 - a processor that refuses the option: count without it
                continue

    def _ids(self, question: str, size: tuple[int, int], kwargs: dict) -> list[int]:
        from PIL import Image

        from lpoi.models.chat import processor_kwargs, prompt_text, text_kwargs

        # the call of lpoi.models.chat.encode_batch (its options, text_kwargs' BOS rule), plus ``kwargs``
        text = prompt_text(self.processor, question)
        enc = self.processor(text=[text], images=[[Image.new("RGB", size)]], **processor_kwargs(self.processor),
                             **text_kwargs(self.processor, text), **kwargs)
        return list(enc["input_ids"][0])

    def tokens(self, prompt: str, size: tuple[int, int] = (32, 32)) -> int:
        if self._kwargs is None:
            self._probe()
        return len(self._ids(prompt, (32, 32) if self.fixed else size, self._kwargs))

    def check(self, prompt: str, size: tuple[int, int]) -> None:
        n = self.tokens(prompt, size)
        if n >= self.max_length:
            raise _Reject("prompt_too_long", f"the prompt takes {n} tokens of {self.model_name} (the image's "
                                             f"included), leaving no room for an answer within "
                                             f"reference.max_length = {self.max_length}")


# ---------------------------------------------------------------------------------------------- stream


def prepare_records(
    records_path: str | os.PathLike,
    images_root: str | os.PathLike,
    params: PrepareParams | None = None,
    *,
    budget: PromptBudget | None = None,
    out_dir_images: str | os.PathLike | None = None,
    compress_level: int = 6,
) -> Iterator[tuple[str, dict]]:
    """Validate records one by one; yield ``("ok", prepared_row)`` or ``("reject", reject_row)`` in input order.

    ``params`` bounds sizes and lengths (defaults: :class:`lpoi.config.PrepareParams`); ``budget`` (the
    stage passes one for ``model.name`` and ``reference.max_length``) rejects prompts too long for them.
    ``prepared_row``: ``{"id", "image", "image_path", "prompt", "chosen", "rejected", "width", "height",
    "image_sha256", "normalised", "placeholders_removed", "text_normalised"}`` — ``image`` is img_path as
    given (normalised to posix form), ``image_path`` is the file later stages read (the source, or the
    normalised PNG copy under ``out_dir_images``; see the module docstring), ``width``/``height`` are after
    EXIF orientation, the texts are normalised (:func:`normalise_text`) and without placeholders;
    ``text_normalised`` says whether normalising changed a text or the id. ``reject_row``: ``{"index",
    "id", "reason", "detail"}`` with ``index`` the 0-based input position.

    With ``out_dir_images=None`` nothing is written and ``image_path`` is always the source path
    (validation only; readers must then use :func:`lpoi.io.load_image`). A file that is not a list of
    records (a JSON object, not UTF-8/16/32) raises :class:`lpoi.io.InputError`.
    """
    p = params if params is not None else PrepareParams()
    root = Path(images_root)
    if not root.is_dir():
        raise FileNotFoundError(f"images root is not a directory: {root}")
    out_dir = Path(out_dir_images) if out_dir_images is not None else None
    seen_ids: set[str] = set()
    seen_keys: set[str] = set()

    for index, rec in enumerate(read_records(records_path, record_keys=REQUIRED_FIELDS)):
        rid: str | None = None
        try:
            rid = _given_id(rec)  # first: a reject for any other reason still names the record
            given = _check_id(rec)
            fields, texts = _check_fields(rec)
            _check_text(fields, p)
            rel = fields["img_path"]
            try:
                safe_join(root, rel)
            except UnsafePathError as e:
                raise _Reject("unsafe_path", str(e)) from None
            path = _resolve_image(root, rel)
            if path is None:
                raise _Reject("missing_image", f"no such image file: {root / rel} (nor below its images/ folder "
                                               f"or by its basename in {root})")
            img_sha = sha256_file(path)
            key = content_key(img_sha, fields["prompt"], fields["chosen"], fields["rejected"])
            sid = given if given is not None else key[:16]
            if rid is None:
                rid = sid
            if key in seen_keys:
                raise _Reject(
                    "duplicate_record", "same image bytes, prompt, chosen and rejected as an earlier record"
                )
            if sid in seen_ids:
                shown = f"id {sid!r}" + (f" ({rid!r} normalised)" if rid != sid else "")
                raise _Reject("duplicate_id", f"{shown} already used by an earlier record")
            img, needs_normalising = _check_image(path, p)
            if budget is not None:
                budget.check(fields["prompt"], img.size)
            normalised = False
            image_path = path
            if out_dir is not None and needs_normalising:
                image_path = out_dir / f"{safe_stem(sid)}.png"
                atomic_write_bytes(image_path, encode_png(img, compress_level))
                normalised = True
        except _Reject as r:
            yield "reject", {"index": index, "id": rid, "reason": r.reason, "detail": r.detail}
            continue
        seen_ids.add(sid)
        seen_keys.add(key)
        yield (
            "ok",
            {
                "id": sid,
                "image": _norm_rel(rel),
                "image_path": image_path.as_posix(),
                "prompt": fields["prompt"],
                "chosen": fields["chosen"],
                "rejected": fields["rejected"],
                "width": img.size[0],
                "height": img.size[1],
                "image_sha256": img_sha,
                "normalised": normalised,
                "placeholders_removed": any(fields[k] != v for k, v in texts.items()),
                "text_normalised": any(rec[k] != v for k, v in texts.items())
                                   or (given is not None and given != str(rec["id"])),
            },
        )


def run_prepare(
    pairs_path: str | os.PathLike,
    images_root: str | os.PathLike,
    prepared_path: str | os.PathLike,
    rejects_path: str | os.PathLike,
    params: PrepareParams | float | None = None,
    *,
    budget: PromptBudget | None = None,
    out_dir_images: str | os.PathLike | None = None,
    compress_level: int = 6,
) -> dict:
    """Write ``prepared.jsonl`` and ``rejects.jsonl`` (both atomically) and return a summary.

    ``params``: the ``prepare`` section (a bare number is read as its ``max_reject_ratio``, the other bounds
    at their defaults). ``out_dir_images`` (normalised PNG copies) defaults to ``<prepared_path's
    folder>/prepared_images``.
    Summary: ``{"records_in", "records_out", "rejected", "reject_ratio", "rejects_by_reason",
    "normalised_images", "placeholders_removed", "texts_normalised", "max_reject_ratio"}``.

    Raises :class:`RejectRatioExceeded` *after* writing both files when
    ``rejected / records_in > params.max_reject_ratio`` or when no record was accepted (so the user can
    read the rejects), and :class:`lpoi.io.InputError` when the input holds no records at all or is not
    a list of records.
    """
    if isinstance(params, (int, float)):  # the former signature: a bare max_reject_ratio (callers in tests)
        params = PrepareParams(max_reject_ratio=params)
    p = params if params is not None else PrepareParams()
    prepared_path, rejects_path = Path(prepared_path), Path(rejects_path)
    if out_dir_images is None:
        out_dir_images = prepared_path.parent / "prepared_images"
    n_in = n_out = n_norm = n_placeholders = n_texts = 0
    reasons: Counter[str] = Counter()
    with atomic_open(prepared_path) as ok_f, atomic_open(rejects_path) as rej_f:
        for kind, row in prepare_records(
            pairs_path, images_root, p, budget=budget, out_dir_images=out_dir_images, compress_level=compress_level
        ):
            n_in += 1
            if kind == "ok":
                n_out += 1
                n_norm += row["normalised"]
                n_placeholders += row["placeholders_removed"]
                n_texts += row["text_normalised"]
                ok_f.write(json.dumps(row, ensure_ascii=False) + "\n")
            else:
                reasons[row["reason"]] += 1
                rej_f.write(json.dumps(row, ensure_ascii=False) + "\n")
    n_rej = n_in - n_out
    summary = {
        "records_in": n_in,
        "records_out": n_out,
        "rejected": n_rej,
        "reject_ratio": n_rej / n_in if n_in else 0.0,
        "rejects_by_reason": dict(sorted(reasons.items())),
        "normalised_images": n_norm,
        "placeholders_removed": n_placeholders,
        "texts_normalised": n_texts,
        "max_reject_ratio": p.max_reject_ratio,
    }
    log.info(
        "prepare: %d records in, %d out, %d rejected %s", n_in, n_out, n_rej, summary["rejects_by_reason"]
    )
    if n_in == 0:
        raise InputError(f"{pairs_path}: no records found (expected a JSON list or JSONL of preference pairs)")
    top = ", ".join(f"{r}: {n}" for r, n in reasons.most_common())
    if n_out == 0:
        raise RejectRatioExceeded(
            f"prepare accepted none of the {n_in} records (reasons: {top}); see {rejects_path} "
            "(later stages would have nothing to work on: fix the data or the images root)"
        )
    if summary["reject_ratio"] > p.max_reject_ratio:
        raise RejectRatioExceeded(
            f"prepare rejected {n_rej} of {n_in} records ({summary['reject_ratio']:.1%}), more than "
            f"prepare.max_reject_ratio = {p.max_reject_ratio:g}; reasons: {top}; see {rejects_path} "
            "(fix the data or images root, or raise prepare.max_reject_ratio)"
        )
    return summary


def prepare_summary_line(summary: dict[str, Any], rejects_path: str | os.PathLike) -> str:
    """What ``stages/prepare.py`` prints: kept / rejected by reason, and where the rejects are."""
    n_in, n_out = summary.get("records_in", 0), summary.get("records_out", 0)
    reasons = summary.get("rejects_by_reason") or {}
    line = f"prepare: kept {n_out} of {n_in} records"
    if reasons:
        by = ", ".join(f"{r} {n}" for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))
        line += f"; rejected {n_in - n_out} ({by}), see {rejects_path}"
    return line
