"""The offline NLTK data the pipeline needs, checked (and fetched when allowed) in one place.

Candidate extraction (list generation) and the AMBER and Object HalBench scorers all tokenize, tag and
lemmatize with NLTK. On a machine with internet the missing packages are downloaded and the user is told;
offline, the error names the packages, the folders NLTK searched, and how to install them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

__all__ = ["NLTK_RESOURCES", "NltkDataMissing", "ensure_nltk_data", "missing_nltk_data"]

NLTK_RESOURCES = {  # package name -> the path nltk.data.find looks up (nltk >= 3.9 names)
    "punkt_tab": "tokenizers/punkt_tab/english/",
    "averaged_perceptron_tagger_eng": "taggers/averaged_perceptron_tagger_eng/",
    "wordnet": "corpora/wordnet",
}


class NltkDataMissing(RuntimeError):
    """Offline NLTK data is not installed where NLTK looks for it."""


def missing_nltk_data(resources: Mapping[str, str] = NLTK_RESOURCES) -> list[str]:
    """Names of the packages NLTK cannot find (a zipped copy, ``<path>.zip``, counts as found)."""
    import nltk

    out = []
    for name, path in resources.items():
        for candidate in (path, path.rstrip("/") + ".zip"):
            try:
                nltk.data.find(candidate)
                break
            except LookupError:
                continue
        else:
            out.append(name)
    return out


def ensure_nltk_data(resources: Mapping[str, str] = NLTK_RESOURCES, *, purpose: str, download: bool = True,
                     index_url: str | None = None, download_dir: str | os.PathLike | None = None) -> None:
    """Make sure ``resources`` are findable; download the missing ones when ``download`` (saying so on
    stderr) from ``index_url`` (default ``$NLTK_DOWNLOAD_URL`` as NLTK's CLI, else NLTK's server) into
    ``download_dir`` (default: NLTK's choice). Raises :class:`NltkDataMissing` if any is still missing."""
    import nltk

    todo = missing_nltk_data(resources)
    if todo and download:
        from nltk.downloader import Downloader

        index_url = index_url or os.environ.get("NLTK_DOWNLOAD_URL") or None
        fetch = Downloader(server_index_url=index_url).download if index_url else nltk.download
        for name in todo:
            print(f"lpoi: NLTK data '{name}' not found; downloading it for {purpose}", file=sys.stderr)
            try:
                ok = fetch(name, download_dir=None if download_dir is None else str(download_dir), quiet=True)
            except Exception as e:  # noqa: BLE001 - the downloader raises assorted network errors
                ok = False
                print(f"lpoi: NLTK download of '{name}' raised {type(e).__name__}: {e}", file=sys.stderr)
            print(f"lpoi: NLTK data '{name}': {'downloaded' if ok else 'download FAILED'}", file=sys.stderr)
        todo = missing_nltk_data(resources)
    if todo:
        raise NltkDataMissing(
            f"NLTK data missing for {purpose}: {', '.join(todo)}"
            f"{' (the download failed: offline?)' if download else ' (downloads disabled)'}. "
            f"Point NLTK_DATA at a folder that holds them (NLTK_DATA={os.environ.get('NLTK_DATA', '<unset>')}; "
            f"NLTK searched: {list(nltk.data.path)}), or install them with "
            f"`python -m nltk.downloader {' '.join(todo)}`."
        )
