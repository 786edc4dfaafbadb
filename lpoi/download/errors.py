"""Errors raised by the download stages; each carries a stable machine-readable ``reason``."""

from __future__ import annotations

__all__ = ["ChecksumMismatch", "DatasetUnavailable", "DownloadError", "NetworkError", "UnsafeArchiveError"]


class DownloadError(RuntimeError):
    """A file could not be fetched (HTTP error, hub error, short body, concurrent download...)."""

    reason = "download_failed"

    def __init__(self, message: str, *, url: str | None = None, reason: str | None = None):
        super().__init__(message)
        self.url = url
        if reason is not None:
            self.reason = reason


class NetworkError(DownloadError):
    """No connection (DNS failure, refused, timeout, cut): the user can place the file by hand."""

    reason = "network"


class ChecksumMismatch(DownloadError):
    """A file's size or hash differs from the recorded one. A file we downloaded is deleted first."""

    reason = "checksum_mismatch"

    def __init__(self, path: str, what: str, expected: str | int, observed: str | int, *, url: str | None = None,
                 deleted: bool):
        fate = "it was deleted" if deleted else "it was left in place: remove or replace it"
        super().__init__(
            f"{path}: {what} mismatch: expected {expected}, got {observed} ({fate}). "
            "The source changed or the transfer was corrupted; do not use this file.",
            url=url,
        )
        self.path, self.what, self.expected, self.observed, self.deleted = path, what, expected, observed, deleted


class UnsafeArchiveError(ValueError):
    """An archive member that would escape its folder, a symlink, or a zip bomb. Nothing was extracted."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"unsafe archive ({reason}): {detail}")
        self.reason = reason
        self.detail = detail


class DatasetUnavailable(RuntimeError):
    """Files of a dataset are missing and cannot be fetched now (offline or no network).

    The message names the dataset, each missing file's URL and where to put it by hand, and the
    expected layout; re-running after placing the files verifies them and proceeds.
    """

    reason = "unavailable"

    def __init__(self, message: str, *, dataset: str, missing: list[dict]):
        super().__init__(message)
        self.dataset = dataset
        self.missing = missing
