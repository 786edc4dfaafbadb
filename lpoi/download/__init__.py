"""Download stages for the real data: the training pairs and the three benchmarks, checksummed and resumable.

Public API (see each module for the why):

- :func:`fetch` — one dataset of ``lpoi/sources.json`` into ``dest`` in the layout the pipeline expects;
- :func:`download_file` — resumable HTTP(S) download to a ``.part`` file, verified, moved into place atomically;
- :func:`safe_extract` — zip extraction that refuses zip-slip, symlinks and zip bombs before writing anything;
- :func:`load_sources` — the recorded sources, validated.
"""

from lpoi.download.archive import DEFAULT_MAX_RATIO, DEFAULT_MAX_TOTAL, ExtractResult, safe_extract
from lpoi.download.errors import (
    ChecksumMismatch,
    DatasetUnavailable,
    DownloadError,
    NetworkError,
    UnsafeArchiveError,
)
from lpoi.download.fetch import LOCK_NAME, ExtractReport, FetchReport, FileReport, fetch
from lpoi.download.integrity import hash_file, verify_file
from lpoi.download.sources import TO_BE_FILLED, DatasetSpec, FileSpec, load_sources
from lpoi.download.transfer import DownloadResult, download_file

__all__ = [
    "DEFAULT_MAX_RATIO",
    "DEFAULT_MAX_TOTAL",
    "LOCK_NAME",
    "TO_BE_FILLED",
    "ChecksumMismatch",
    "DatasetSpec",
    "DatasetUnavailable",
    "DownloadError",
    "DownloadResult",
    "ExtractReport",
    "ExtractResult",
    "FetchReport",
    "FileReport",
    "FileSpec",
    "NetworkError",
    "UnsafeArchiveError",
    "download_file",
    "fetch",
    "hash_file",
    "load_sources",
    "safe_extract",
    "verify_file",
]
