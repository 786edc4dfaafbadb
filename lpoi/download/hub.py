"""Hugging Face Hub files through ``huggingface_hub.hf_hub_download`` (its cache, its resume, its auth).

Environment is read at *call* time, not at import: ``huggingface_hub.constants`` freezes
``HF_ENDPOINT``/``HF_HOME``/``HF_HUB_OFFLINE`` when first imported, so a stage (or a test) that sets
them later would otherwise be ignored. We pass them explicitly:

- ``HF_ENDPOINT`` -> ``endpoint=``; ``HF_HUB_CACHE`` or ``HF_HOME``/hub -> ``cache_dir=``;
- ``HF_TOKEN`` -> ``token=`` (never logged; ``None`` lets the hub use its stored login);
- offline (``HF_HUB_OFFLINE=1`` or ``offline=True``) -> ``local_files_only=True``: a file already in
  the cache is used, anything else is :class:`NetworkError` so the caller can explain manual placement.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from lpoi.download.errors import DownloadError, NetworkError
from lpoi.download.sources import HubRef

__all__ = ["env_offline", "hub_cache_dir", "hub_download", "hub_endpoint"]

_TRUE = {"1", "true", "yes", "on"}


def env_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def hub_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def hub_download(ref: HubRef, *, offline: bool, progress: bool = True) -> Path:
    """Path of ``ref`` in the local hub cache, downloading it first unless offline."""
    from huggingface_hub import errors as hf_errors
    from huggingface_hub import hf_hub_download

    url = ref.url(hub_endpoint())
    try:
        with _progress(progress):
            p = hf_hub_download(
                ref.repo_id,
                ref.filename,
                repo_type=ref.repo_type,
                revision=ref.revision,
                cache_dir=hub_cache_dir(),
                endpoint=hub_endpoint(),
                token=os.environ.get("HF_TOKEN") or None,
                local_files_only=offline,
            )
    except hf_errors.GatedRepoError:
        raise DownloadError(f"{url}: the repository is gated; accept its terms on the Hub and set HF_TOKEN",
                            url=url, reason="gated") from None
    except hf_errors.RepositoryNotFoundError:
        raise DownloadError(f"{url}: repository {ref.repo_id!r} not found (or private: set HF_TOKEN)",
                            url=url, reason="not_found") from None
    except hf_errors.RevisionNotFoundError:
        raise DownloadError(f"{url}: revision {ref.revision!r} not found in {ref.repo_id}", url=url,
                            reason="not_found") from None
    except hf_errors.LocalEntryNotFoundError as e:  # (before EntryNotFoundError, its base class)
        why = "offline mode" if offline else "no connection to the Hub"
        raise NetworkError(f"{url}: {why} and not in the hub cache {hub_cache_dir()} ({type(e).__name__})",
                           url=url) from None
    except (hf_errors.RemoteEntryNotFoundError, hf_errors.EntryNotFoundError):
        raise DownloadError(f"{url}: no file {ref.filename!r} in {ref.repo_id}@{ref.revision}", url=url,
                            reason="not_found") from None
    except hf_errors.HfHubHTTPError as e:
        code = getattr(getattr(e, "response", None), "status_code", "?")
        raise DownloadError(f"{url}: Hub HTTP error {code}", url=url, reason=f"http_{code}") from None
    except Exception as e:
        if _is_transport_error(e):  # connection dropped during the GET, after the hub's own retries
            raise NetworkError(f"{url}: connection lost ({type(e).__name__}); re-run to retry", url=url) from None
        if isinstance(e, OSError):  # size consistency check, disk full...
            raise DownloadError(f"{url}: {type(e).__name__}: {e}", url=url) from None
        raise
    return Path(p)


def _is_transport_error(e: BaseException) -> bool:
    try:
        import httpx2
    except ImportError:  # older huggingface_hub used httpx / requests
        return isinstance(e, ConnectionError)
    return isinstance(e, (httpx2.TransportError, ConnectionError))


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[None]:
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    was_disabled = are_progress_bars_disabled()
    if not enabled and not was_disabled:
        disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            enable_progress_bars()
