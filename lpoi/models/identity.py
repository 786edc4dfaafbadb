"""What a model name stands for, as a small JSON-able dict: the part of a stage's fingerprint that says
*which weights* it loads (a name alone does not: a hub id moves, a folder is overwritten, a tiny builder
is edited).

* ``tiny/<family>``: built offline from code — the family, the seed, the builder version and a digest of
  every builder module in ``lpoi/models`` (the weights are a function of these);
* a hub id: the snapshot commit the local hub cache resolves it to (``huggingface_hub``, no download);
  when it is not cached and the hub is reachable, the commit the hub would serve now;
* a local folder: the sha256 of each of its weight, config and tokenizer files;
* a local file (an official ``.pth`` checkpoint of the detector or segmenter): its sha256.

A file that ``stages/download.py`` verified carries a stamp (``lpoi.download.integrity``: size, mtime and
sha256); while size and mtime are unchanged its sha256 is taken from there, so a multi-GB checkpoint is not
re-read at every stage start (the trade-off DVC makes too; delete the stamp to force a re-hash).

The library versions that turn those weights into numbers (torch, transformers) and the CPU numerics
(:func:`lpoi.numerics.signature`) are part of it too.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["model_digest", "model_identity"]

_FILES = (".safetensors", ".json", ".model", ".txt", ".bin", ".pth", ".pt", ".tiktoken", ".jinja", ".py")


def model_identity(name: str, seed: int = 0) -> dict[str, Any]:
    """``{"name", "kind": "tiny" | "hub" | "folder" | "file", ...}`` plus the library versions (see the module docstring)."""
    import torch
    import transformers

    from lpoi.numerics import signature

    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "numerics": signature()}
    if name.startswith("tiny/"):
        return {"name": name, "kind": "tiny", **_tiny(name.removeprefix("tiny/"), seed), **versions}
    if Path(name).is_dir():
        return {"name": name, "kind": "folder", "files": _folder_files(Path(name)), **versions}
    if Path(name).is_file():
        return {"name": name, "kind": "file", "sha256": _sha256(Path(name)), **versions}
    return {"name": name, "kind": "hub", "revision": _hub_revision(name), **versions}


def model_digest(name: str, seed: int = 0) -> str:
    """The sha256 of :func:`model_identity`: what a stage fingerprint and a reference row key store."""
    return hashlib.sha256(json.dumps(model_identity(name, seed), sort_keys=True, default=str).encode()).hexdigest()


def _sha256(path: Path) -> str:
    from lpoi.download.integrity import stamped_sha256
    from lpoi.io import sha256_file

    return stamped_sha256(path) or sha256_file(path)


def _tiny(family: str, seed: int) -> dict[str, Any]:
    from .tiny import TINY_FAMILIES, TINY_VERSION

    if family not in TINY_FAMILIES:
        raise ValueError(f"unknown tiny model 'tiny/{family}'; known: {', '.join('tiny/' + f for f in TINY_FAMILIES)}")
    h = hashlib.sha256(b"code v2\n")  # v1 joined name and bytes by NUL: ambiguous, and never equal to this
    for p in sorted(Path(__file__).parent.glob("*.py")):  # the builders and everything they use
        h.update(hashlib.sha256(p.name.encode()).digest() + hashlib.sha256(p.read_bytes()).digest())
    return {"family": family, "seed": seed, "version": TINY_VERSION, "code": h.hexdigest()}


def _folder_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.suffix in _FILES and not any(part.startswith(".") for part in p.parts)}


def _hub_revision(repo_id: str) -> str | None:
    """The commit of ``repo_id`` in the local hub cache; else what the hub serves (when online); else None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True)).name
    except (LocalEntryNotFoundError, OSError, ValueError):
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return None  # loading will fail with a clear ModelNotFound
    try:
        from huggingface_hub import HfApi

        return HfApi().model_info(repo_id).sha
    except Exception:  # noqa: BLE001 - no network, gated, unknown id: the loader reports it properly
        return None
