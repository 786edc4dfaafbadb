"""LLM judges for the benchmark scorers: an OpenAI-compatible HTTP client and a local HF model.

Both judges share one interface, ``complete_many(prompts) -> list[JudgeReply]`` (same order as
``prompts``), so MMHal-Bench rating (``lpoi.eval.benchmarks.mmhal``) and the Object HalBench
``llm`` object extractor (``lpoi.eval.benchmarks.objhal``) do not care which one runs.

Why a client of our own instead of the ``openai`` package the official scripts use
(LLaVA-RLHF ``Eval/eval_gpt_mmhal.py``, RLHF-V ``eval/eval_gpt_mmhal.py`` / ``gpt4_grpc.Chat``):
those loop *forever* on any exception (``while response is None: ... time.sleep(10)``), call the
API one item at a time, keep nothing on disk until the very end, and take the key on the command
line (where it lands in shell history and process lists). Here:

- **Disk cache**: one JSON file per reply, keyed by sha256 of (endpoint, model, messages,
  temperature, max_tokens), written atomically, and journalled (sha256 of each file's bytes): a reply
  file that is not what the cache wrote (a hand-edited rating) is asked for again and stored afresh,
  never scored. A re-run costs no API calls; a killed run resumes where it stopped. Errors are never
  cached (a re-run retries them).
- **Interrupts**: Ctrl-C (and SIGTERM, in the main thread) stops sending at once -- queued requests are
  cancelled, retry waits end, the sockets of the requests in flight are shut -- and propagates; the
  replies received so far are already cached.
- **Retries** with exponential backoff and jitter on HTTP 408, 429, 5xx, timeouts and connection errors
  (a connection closed before the whole body arrived included), honouring ``Retry-After`` (seconds or
  an HTTP date, capped at ``retry_after_max``), at most ``max_retries`` retries; then the item is
  recorded as an error, never an endless loop.
- **Deadline**: ``timeout`` bounds each socket operation, so a server that trickles a byte at a time
  would hold a request for ever; ``deadline`` bounds one request (connect to last byte) by shutting its
  socket down when the time is up (a timer; the request then counts as a timed-out, retryable attempt).
- **Malformed replies** (body not JSON, no ``choices``, no string content) are recorded as a
  :class:`JudgeReply` with a machine-readable ``error`` and counted by the caller; never a crash.
- **Bounded concurrency**: at most ``max_concurrency`` requests in flight (a thread pool).
- **The API key** is read from the environment variable named by ``api_key_env`` and lives only in
  a private holder (redacted ``repr``/``str``, not picklable) used to build the ``Authorization`` header.
  It is not in ``repr``, the cache, log messages, error details or replies: everything a server sends
  back (error bodies, and the reply text itself, which a proxy that echoes request headers fills with
  it) is scrubbed of the key, and of any 8-character piece of it, before it is stored, logged or
  returned; cached texts are scrubbed again when read. Redirects are refused so the header never
  follows one to another host.
- **URLs**: ``/chat/completions`` is appended to the base URL's path, keeping its query string
  (Azure-style ``...?api-version=...``); the query is left out of logs, labels and cache keys, as it may
  carry credentials.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import email.utils
import hashlib
import http.client
import json
import logging
import math
import os
import random
import signal
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Protocol

from lpoi.io import atomic_write_bytes

__all__ = [
    "HFJudge",
    "Judge",
    "JudgeConfigError",
    "JudgeFailed",
    "JudgeReply",
    "Messages",
    "OpenAIJudge",
    "all_failed",
    "parse_retry_after",
    "to_messages",
]

log = logging.getLogger(__name__)

Messages = list[dict[str, Any]]
Prompt = str | Messages

CACHE_FORMAT = 1  # bump when the cache record layout changes
MAX_RESPONSE_BYTES = 16 * 1024 * 1024  # a chat completion is a few kB; refuse absurd bodies


class JudgeConfigError(RuntimeError):
    """The judge cannot be used as configured (missing key variable, bad URL, bad numbers)."""


class JudgeFailed(JudgeConfigError):
    """The judge failed on every item, so there is nothing to score (a wrong URL, model or key, a server
    down): one line naming the judge, its endpoint and the first error (see :func:`all_failed`)."""


def all_failed(what: str, judge: Any, n: int, errors: Counter, first: str) -> JudgeFailed:
    """The error for ``n`` items that all failed (``errors``: reason -> count; ``first``: the first one)."""
    name = getattr(judge, "label", type(judge).__name__)
    endpoint = getattr(judge, "endpoint", None)  # already without its query string (it may hold credentials)
    where = f" at {endpoint}" if endpoint and endpoint not in name else ""
    hint = "judge.base_url, judge.model and the API key variable" if endpoint else "judge.model"
    first = " ".join(str(first).split())  # one line, whatever the server put in its error body
    if len(first) > 300:
        first = first[:300] + "..."
    return JudgeFailed(f"{what}: the judge {name}{where} failed on all {n} items ({dict(errors)}); "
                       f"first error: {first}. Check {hint}")


@dataclass(frozen=True)
class JudgeReply:
    """One judge answer. Exactly one of ``text`` / ``error`` is set.

    ``error`` is a stable machine-readable reason: ``malformed_json``, ``malformed_reply``,
    ``empty_content``, ``http_<status>`` (a non-retryable status such as 400 or 401),
    ``retries_exhausted`` (429/5xx/timeouts/connection errors past ``max_retries``),
    ``response_too_large``. ``detail`` is a human-readable explanation (never the key).
    """

    text: str | None
    error: str | None = None
    detail: str | None = None
    cached: bool = False
    attempts: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None


class Judge(Protocol):
    """What the scorers need from a judge."""

    label: str

    def complete_many(self, prompts: Sequence[Prompt]) -> list[JudgeReply]: ...


def to_messages(prompt: Prompt) -> Messages:
    """A plain string becomes one user message (what LLaVA-RLHF's ``eval_gpt_mmhal.py`` sends)."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in prompt):
        return [dict(m) for m in prompt]
    raise TypeError(f"a judge prompt must be a string or a list of {{role, content}} messages, got {type(prompt).__name__}")


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (RFC 9110 §10.2.3), or ``None`` if absent/invalid.

    Accepts delay-seconds (fractions allowed, negatives clamp to 0) and an HTTP date (a past date → 0).

    >>> parse_retry_after("3")
    3.0
    >>> parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now=datetime(2015, 10, 21, 7, 28, 0, tzinfo=timezone.utc))
    5.0
    >>> parse_retry_after("soon") is None
    True
    """
    if value is None:
        return None
    v = value.strip()
    if not v:
        return None
    try:
        secs = float(v)
    except ValueError:
        pass
    else:
        return max(0.0, secs) if math.isfinite(secs) else None
    try:
        when = email.utils.parsedate_to_datetime(v)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    now = now or datetime.now(timezone.utc)
    return max(0.0, (when - now).total_seconds())


def _redact_url(url: str) -> str:
    """Endpoint without userinfo, query or fragment (those may carry credentials)."""
    p = urllib.parse.urlsplit(url)
    host = p.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    netloc = f"{host}:{p.port}" if p.port else host
    return urllib.parse.urlunsplit((p.scheme, netloc, p.path, "", ""))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would otherwise copy the Authorization header to the new host."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


class _Secret:
    """Holds the API key; every printable form of it is redacted and it refuses to be pickled."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "_Secret('[REDACTED]')"

    __str__ = __repr__

    def __reduce__(self):
        raise TypeError("the judge API key cannot be pickled")


class _ReplyCache:
    """One JSON file per key under ``root/<key[:2]>/<key>.json``, written atomically, and a journal.

    The journal (``root/journal.jsonl``, one fsynced line per stored reply: key and sha256 of the file's
    bytes) is what makes a cached reply trustworthy: a file whose bytes are not the ones this cache wrote
    (a hand-edited rating, a reply written by an older version without a journal, a file from another
    cache) is not served; the reply is asked for again and stored afresh, so the cache heals itself.
    Written after the reply file: a kill between the two leaves an unjournalled file, asked for again.
    """

    JOURNAL = "journal.jsonl"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self._lock = threading.Lock()
        self._journal: dict[str, str] = {}
        path = self.root / self.JOURNAL
        if path.is_file():
            raw = path.read_bytes()
            for line in raw[: raw.rfind(b"\n") + 1].splitlines():  # a kill may leave a partial last line
                try:
                    e = json.loads(line)
                    self._journal[str(e["key"])] = str(e["sha256"])  # a later line wins: the reply was re-stored
                except (ValueError, KeyError, TypeError):
                    continue
        self.rejected: list[Path] = []  # entries found edited (or unjournalled) since this cache was opened

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> str | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError:
            log.warning("judge cache: unreadable entry %s, asking again", path.name)
            return None
        with self._lock:
            stored = self._journal.get(key)
        if stored != hashlib.sha256(data).hexdigest():
            log.debug("judge cache: %s is not the reply this cache stored; asking again", path)
            with self._lock:
                self.rejected.append(path)
            return None
        try:
            rec = json.loads(data.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return None
        if not isinstance(rec, dict) or rec.get("format") != CACHE_FORMAT or not isinstance(rec.get("text"), str):
            return None
        if rec.get("key", key) != key:  # a journalled file copied under another key's name
            return None
        return rec["text"]

    def put(self, key: str, record: dict) -> None:
        data = (json.dumps({"format": CACHE_FORMAT, **record}, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        digest = hashlib.sha256(data).hexdigest()
        atomic_write_bytes(self._path(key), data)
        with self._lock:  # worker threads store replies concurrently
            with open(self.root / self.JOURNAL, "a", encoding="utf-8") as f:
                f.write(json.dumps({"key": key, "sha256": digest}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            self._journal[key] = digest


class _Transient(Exception):
    """A retryable failure: 429, 5xx, timeout, connection error."""

    def __init__(self, reason: str, detail: str, retry_after: float | None = None):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.retry_after = retry_after


class OpenAIJudge:
    """A judge behind any OpenAI-compatible ``POST {base_url}/chat/completions`` endpoint.

    Works with api.openai.com, Azure-style proxies, vLLM, llama.cpp server, etc. The request body
    is ``{"model", "messages", "temperature", "max_tokens"}`` (temperature 0 like the official
    ``eval_gpt_mmhal.py``). ``api_key_env=None`` sends no ``Authorization`` header (local servers).

    Parameters: ``timeout`` is per socket operation in seconds, ``deadline`` the most seconds one request
    may take in all (each retry gets its own); the wait before retry ``n`` (1-based)
    is ``Retry-After`` when the server sends one (capped at ``retry_after_max``), else
    ``min(backoff_max, backoff_base * 2**(n-1))`` scaled by a random factor in [0.5, 1] (jitter).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = "OPENAI_API_KEY",
        cache_dir: str | os.PathLike | None = None,
        max_concurrency: int = 4,
        timeout: float = 60.0,
        deadline: float = 180.0,
        max_retries: int = 6,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        retry_after_max: float = 120.0,
        temperature: float = 0.0,
        max_tokens: int | None = 1024,
        label: str | None = None,
        progress: bool = False,
        seed: int | None = None,
    ):
        if not isinstance(base_url, str) or not base_url.strip():
            raise JudgeConfigError("judge.base_url must be a non-empty URL, e.g. https://api.openai.com/v1")
        parts = urllib.parse.urlsplit(base_url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise JudgeConfigError(f"judge.base_url must be an http(s) URL, got {_redact_url(base_url)!r}")
        if not isinstance(model, str) or not model.strip():
            raise JudgeConfigError("judge.model must be a non-empty model name")
        for name, val, lo in (("max_concurrency", max_concurrency, 1), ("max_retries", max_retries, 0)):
            if not isinstance(val, int) or val < lo:
                raise JudgeConfigError(f"judge.{name} must be an integer >= {lo}, got {val!r}")
        for name, val in (("timeout", timeout), ("deadline", deadline), ("backoff_base", backoff_base),
                          ("backoff_max", backoff_max)):
            if not (isinstance(val, (int, float)) and val > 0 and math.isfinite(val)):
                raise JudgeConfigError(f"judge.{name} must be a positive number, got {val!r}")

        path = parts.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path += "/chat/completions"
        url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
        self._url = url
        self.endpoint = _redact_url(url)  # what we log, cache-key and label with
        self.model = model
        self.api_key_env = api_key_env
        self._key: _Secret | None = None
        if api_key_env is not None:
            key = os.environ.get(api_key_env, "")
            if not key.strip():
                raise JudgeConfigError(
                    f"the judge API key is read from the environment variable {api_key_env}, which is not set "
                    f"or empty. Export it (export {api_key_env}=...) or point judge.api_key_env at the variable "
                    "that holds your key (use null for a local server that needs no key)."
                )
            self._key = _Secret(key.strip())
        self.cache = _ReplyCache(cache_dir) if cache_dir is not None else None
        self.max_concurrency = max_concurrency
        self.timeout = float(timeout)
        self.deadline = float(deadline)
        self.max_retries = max_retries
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.retry_after_max = float(retry_after_max)
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.label = label or f"openai-compatible:{model}@{self.endpoint}"
        self.progress = progress
        self._rng = random.Random(seed)
        self._rng_lock = threading.Lock()
        self._stats_lock = threading.Lock()
        self.stats: Counter = Counter()  # requests, retries, cache_hits, cache_rejected, errors, replies
        # set by an interrupt (Ctrl-C, SIGTERM): no request starts after it, retries stop waiting, and the
        # sockets of the requests in flight are shut; it stays set (an interrupted judge answers no more)
        self._stop = threading.Event()
        self._active: set[_Deadline] = set()
        self._active_lock = threading.Lock()
        self._sleep = self._stop.wait  # a retry's wait ends at once on an interrupt

    def __repr__(self) -> str:
        return (
            f"OpenAIJudge(endpoint={self.endpoint!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
            f"max_concurrency={self.max_concurrency}, timeout={self.timeout}, deadline={self.deadline}, "
            f"max_retries={self.max_retries})"
        )

    # ------------------------------------------------------------------------------------ public

    def cache_key(self, prompt: Prompt) -> str:
        """sha256 of (endpoint, model, messages, decoding params): the disk cache key."""
        payload = {
            "endpoint": self.endpoint,
            "model": self.model,
            "messages": to_messages(prompt),
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()

    def complete(self, prompt: Prompt) -> JudgeReply:
        return self.complete_many([prompt])[0]

    def complete_many(self, prompts: Sequence[Prompt]) -> list[JudgeReply]:
        """Replies in the order of ``prompts``; cached ones are served without a request.

        Identical prompts in one call are sent once. An interrupt (``KeyboardInterrupt``; SIGTERM too while
        this runs in the main thread) stops it at once: queued requests are cancelled, retries stop, the
        sockets of the requests in flight are shut, and the interrupt is re-raised. Replies that arrived
        before it are already in the cache.
        """
        messages = [to_messages(p) for p in prompts]
        keys = [self.cache_key(m) for m in messages]
        out: list[JudgeReply | None] = [None] * len(prompts)
        todo: dict[str, list[int]] = {}
        rejected_before = len(self.cache.rejected) if self.cache is not None else 0
        for i, key in enumerate(keys):
            text = self.cache.get(key) if self.cache is not None else None
            if text is not None:  # scrubbed again: a cache written before replies were scrubbed
                out[i] = JudgeReply(text=self._scrub(text), cached=True)
                self._count("cache_hits")
            else:
                todo.setdefault(key, []).append(i)
        if self.cache is not None and len(self.cache.rejected) > rejected_before:
            n = len(self.cache.rejected) - rejected_before
            self._count("cache_rejected", n)
            log.warning("judge cache: %d cached repl%s in %s %s not what this judge stored (edited by hand, or "
                        "written without a journal), e.g. %s; asking the judge again", n, "y" if n == 1 else "ies",
                        self.cache.root, "is" if n == 1 else "are", self.cache.rejected[rejected_before].name)
        if todo:
            with _interrupt_on_sigterm():
                self._run_pool(todo, messages, out)
        return [r for r in out if r is not None]

    def _run_pool(self, todo: dict[str, list[int]], messages: list[Messages], out: list) -> None:
        bar = _progress_bar(len(todo), "judge", self.progress)
        # not a ``with`` block: its exit waits for every queued request, which kept Ctrl-C waiting for minutes
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(todo)))
        futs: dict[concurrent.futures.Future, str] = {}
        try:
            for key, idx in todo.items():
                futs[pool.submit(self._complete_uncached, key, messages[idx[0]])] = key
            for fut in concurrent.futures.as_completed(futs):
                reply = fut.result()
                for i in todo[futs[fut]]:
                    out[i] = reply
                bar.update(1)
        except BaseException:
            self.abort()
            pool.shutdown(wait=False, cancel_futures=True)
            # the cut requests end at once; a short wait lets them (and a reply being cached) finish before the
            # caller reports, bounded because a worker still connecting cannot be cut
            concurrent.futures.wait([f for f in futs if not f.cancelled()], timeout=2.0)  # cancelled: never 'done'
            raise
        finally:
            bar.close()
        pool.shutdown(wait=True)

    def abort(self) -> None:
        """Stop sending: no request starts after this, waits end, the sockets of requests in flight are shut."""
        self._stop.set()
        with self._active_lock:
            active = list(self._active)
        for deadline in active:
            deadline.abort()

    # ------------------------------------------------------------------------------------ internals

    def _count(self, name: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[name] += n

    def _complete_uncached(self, key: str, messages: Messages) -> JudgeReply:
        reply = self._request(messages)
        if reply.error == "interrupted":  # not a failure of the judge: nothing to count or log
            return reply
        if reply.ok:
            self._count("replies")
            if self.cache is not None:
                self.cache.put(
                    key,
                    {
                        "key": key,
                        "endpoint": self.endpoint,
                        "model": self.model,
                        "prompt_sha256": hashlib.sha256(
                            json.dumps(messages, sort_keys=True, ensure_ascii=False).encode("utf-8")
                        ).hexdigest(),
                        "text": reply.text,
                    },
                )
        else:
            self._count("errors")
            log.warning("judge: request failed after %d attempt(s): %s (%s)", reply.attempts, reply.error, reply.detail)
        return reply

    def _backoff(self, retry: int) -> float:
        base = min(self.backoff_max, self.backoff_base * (2 ** (retry - 1)))
        with self._rng_lock:
            return base * (0.5 + 0.5 * self._rng.random())

    def _request(self, messages: Messages) -> JudgeReply:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        attempt = 0
        while True:
            if self._stop.is_set():
                return JudgeReply(None, "interrupted", "scoring was interrupted before this reply", attempts=attempt)
            attempt += 1
            self._count("requests")
            try:
                status, raw = self._post(data)
            except _TooLarge:
                return JudgeReply(
                    None, "response_too_large", f"reply body exceeds {MAX_RESPONSE_BYTES} bytes", attempts=attempt
                )
            except _Transient as e:
                if self._stop.is_set():  # the interrupt shut this request's socket
                    return JudgeReply(None, "interrupted", "scoring was interrupted during this request",
                                      attempts=attempt)
                if attempt > self.max_retries:
                    return JudgeReply(
                        text=None,
                        error="retries_exhausted",
                        detail=f"{e.reason}: {e.detail} (gave up after {attempt} attempts)",
                        attempts=attempt,
                    )
                if e.retry_after is not None:
                    delay = min(e.retry_after, self.retry_after_max)
                else:
                    delay = self._backoff(attempt)
                self._count("retries")
                log.warning(
                    "judge: %s (attempt %d of %d), retrying in %.2f s", e.detail, attempt, self.max_retries + 1, delay
                )
                self._sleep(delay)
                continue
            if status != 200:
                return JudgeReply(
                    text=None, error=f"http_{status}", detail=self._scrub(_snippet(raw, status)), attempts=attempt
                )
            return _parse_completion(raw, attempt, self._scrub)

    def _post(self, data: bytes) -> tuple[int, bytes]:
        expired = _Transient("deadline", f"no complete reply within the {self.deadline:g} s deadline")
        with _Deadline(self.deadline, self._stop) as deadline:
            with self._active_lock:
                self._active.add(deadline)
            try:
                status, raw = self._post_once(data, deadline)
            except _Transient:
                if deadline.expired:  # the timer shut the socket: say why, not "connection reset"
                    raise expired from None
                raise
            finally:
                with self._active_lock:
                    self._active.discard(deadline)
        if deadline.expired:  # cut inside the headers, http.client sees a reply without Content-Length
            raise expired
        return status, raw

    def _post_once(self, data: bytes, deadline: _Deadline) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._key is not None:
            headers["Authorization"] = f"Bearer {self._key.reveal()}"
        req = urllib.request.Request(self._url, data=data, headers=headers, method="POST")
        opener = urllib.request.build_opener(_NoRedirect(), _WatchedHTTPHandler(deadline),
                                             _WatchedHTTPSHandler(deadline))
        try:
            with opener.open(req, timeout=min(self.timeout, self.deadline)) as resp:
                raw = _read_capped(resp)
                missing = getattr(resp, "length", None)  # Content-Length bytes not received
                if missing:
                    raise _Transient("connection", f"connection closed mid-body ({len(raw)} bytes received, "
                                                   f"{missing} missing)")
                return resp.status, raw
        except urllib.error.HTTPError as e:
            try:
                raw = _read_capped(e)
            except Exception:  # noqa: BLE001 - the error body is best effort
                raw = b""
            finally:
                e.close()
            if e.code in (408, 429) or e.code >= 500:
                retry_after = parse_retry_after(e.headers.get("Retry-After") if e.headers else None)
                raise _Transient(f"http_{e.code}", f"HTTP {e.code}", retry_after) from None
            return e.code, raw
        except urllib.error.URLError as e:
            if isinstance(e.reason, (socket.timeout, TimeoutError)):
                raise _Transient("timeout", f"timed out after {self.timeout:g} s") from None
            raise _Transient("connection", f"connection error: {type(e.reason).__name__}") from None
        except TimeoutError:
            raise _Transient("timeout", f"timed out after {self.timeout:g} s") from None
        except (ConnectionError, http.client.HTTPException, OSError) as e:
            raise _Transient("connection", f"connection error: {type(e).__name__}") from None

    def _scrub(self, text: str) -> str:
        """Remove the key, and any 8-character piece of it (servers echo masked keys), from ``text``."""
        key = self._key.reveal() if self._key is not None else ""
        if not key or not text:
            return text
        text = text.replace(key, "[REDACTED]")
        w = 8
        if len(key) > w:
            for i in range(len(key) - w + 1):
                piece = key[i : i + w]
                if piece in text:
                    text = text.replace(piece, "[REDACTED]")
        return text


class _TooLarge(Exception):
    pass


@contextlib.contextmanager
def _interrupt_on_sigterm():
    """SIGTERM raises ``KeyboardInterrupt`` meanwhile (main thread, default handler only), so a ``kill``
    stops the requests as Ctrl-C does and the stage ends with its usual "interrupted" line."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) != signal.SIG_DFL:
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _Deadline:
    """Shuts down the sockets of one request when ``seconds`` have passed since it started (a timer thread).

    A blocked read then returns end-of-file or fails, and the request ends as a connection error that
    :meth:`OpenAIJudge._post` reports as the deadline. Sockets connected after expiry are shut at once.
    """

    def __init__(self, seconds: float, stop: threading.Event | None = None):
        self.seconds = seconds
        self.expired = False
        self._stop = stop
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._socks.append(sock)
            if self.expired or (self._stop is not None and self._stop.is_set()):
                _shutdown(sock)  # connected after an interrupt: nothing is sent on it

    def abort(self) -> None:
        """Shut the sockets now (an interrupt), without calling it the deadline."""
        with self._lock:
            for sock in self._socks:
                _shutdown(sock)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for sock in self._socks:
                _shutdown(sock)

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:  # already closed
        pass


def _watched(base: type[http.client.HTTPConnection], deadline: _Deadline) -> type[http.client.HTTPConnection]:
    """``base`` whose socket is handed to ``deadline`` as soon as it is connected (TLS and proxies included)."""

    class Watched(base):  # type: ignore[misc, valid-type]
        def connect(self):
            super().connect()
            deadline.watch(self.sock)

    return Watched


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(_watched(http.client.HTTPConnection, self._deadline), req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def https_open(self, req):
        return self.do_open(_watched(http.client.HTTPSConnection, self._deadline), req, context=self._context)


def _read_capped(resp) -> bytes:
    raw = resp.read(MAX_RESPONSE_BYTES + 1)
    if len(raw) > MAX_RESPONSE_BYTES:
        raise _TooLarge
    return raw


def _snippet(raw: bytes, status: int) -> str:
    text = raw[:300].decode("utf-8", errors="replace").strip()
    return f"HTTP {status}: {text}" if text else f"HTTP {status}"


def _parse_completion(raw: bytes, attempts: int, scrub) -> JudgeReply:
    """Text of ``choices[0].message.content``; anything else becomes a recorded error."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        return JudgeReply(None, "malformed_json", scrub(f"reply is not JSON ({e}): {raw[:120]!r}"), attempts=attempts)
    try:
        content = data["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        return JudgeReply(None, "malformed_reply", f"no choices[0].message.content in reply (keys: {keys})", attempts=attempts)
    if isinstance(content, list):  # some servers return content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        return JudgeReply(None, "empty_content", f"message content is {type(content).__name__}", attempts=attempts)
    return JudgeReply(text=scrub(content), attempts=attempts)  # a proxy may echo the request's headers


def _progress_bar(total: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a declared dependency
        enabled = False
    if enabled:
        return tqdm(total=total, desc=desc)

    class _Null:
        def update(self, n: int = 1) -> None: ...

        def close(self) -> None: ...

    return _Null()


# ================================================================================ local HF judge


class HFJudge:
    """A local Hugging Face model as the judge: offline, greedy, batched with left padding.

    Takes an already-loaded model (anything with ``generate(input_ids=, attention_mask=)``: a causal
    LM, or a VLM used text-only) and its tokenizer. Each prompt is rendered with the tokenizer's chat
    template when it has one (``add_generation_prompt=True``), else as plain text (message contents
    joined by blank lines). Prompts are sorted by length so a batch carries little padding; replies
    come back in the input order. The stored reply excludes the prompt.

    ``label`` goes into the metrics (``"judge"``); with a tiny random model say so, e.g.
    ``"hf:tiny/llava (tiny random model: scores are meaningless)"``.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_new_tokens: int = 256,
        batch_size: int = 4,
        label: str | None = None,
        progress: bool = False,
    ):
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise JudgeConfigError(f"judge.max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise JudgeConfigError(f"judge.batch_size must be an integer >= 1, got {batch_size!r}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        name = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", None)
        self.label = label or f"hf:{name or type(model).__name__}"
        self.progress = progress
        self.stats: Counter = Counter()

    def __repr__(self) -> str:
        return f"HFJudge(label={self.label!r}, max_new_tokens={self.max_new_tokens}, batch_size={self.batch_size})"

    def encode(self, prompt: Prompt) -> list[int]:
        """Token ids of one rendered prompt (chat template if the tokenizer has one)."""
        msgs = to_messages(prompt)
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            try:
                enc = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)
            except Exception:  # noqa: BLE001 - some templates want content parts instead of strings
                parts = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in msgs]
                enc = tok.apply_chat_template(parts, add_generation_prompt=True, tokenize=True, return_dict=True)
            ids = enc["input_ids"]
        else:
            text = "\n\n".join(str(m["content"]) for m in msgs)
            ids = tok(text, add_special_tokens=True)["input_ids"]
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if ids and isinstance(ids[0], list):
            ids = ids[0]
        return [int(i) for i in ids]

    def _pad_id(self) -> int:
        tok = self.tokenizer
        for v in (tok.pad_token_id, tok.eos_token_id):
            if isinstance(v, int):
                return v
            if isinstance(v, list) and v:
                return int(v[0])
        return 0

    def complete_many(self, prompts: Sequence[Prompt]) -> list[JudgeReply]:
        import torch

        encoded = [self.encode(p) for p in prompts]
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        longest = max((len(e) for e in encoded), default=0)
        if isinstance(limit, int) and longest + self.max_new_tokens > limit:
            log.warning(
                "judge %s: prompts of up to %d tokens + %d new exceed the model's max_position_embeddings=%d; "
                "the replies may be poor (nothing is truncated)", self.label, longest, self.max_new_tokens, limit
            )
        order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i]), i))
        out: list[JudgeReply | None] = [None] * len(encoded)
        pad = self._pad_id()
        device = getattr(self.model, "device", torch.device("cpu"))
        bar = _progress_bar(len(encoded), "judge", self.progress)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            width = max(len(encoded[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for row, i in enumerate(idx):  # left padding: the last prompt token sits at the right edge
                seq = encoded[i]
                ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long)
                mask[row, width - len(seq) :] = 1
            with torch.inference_mode():
                gen = self.model.generate(
                    input_ids=ids.to(device),
                    attention_mask=mask.to(device),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    num_beams=1,
                    pad_token_id=pad,
                )
            new = gen[:, width:].cpu()
            for row, i in enumerate(idx):
                text = self.tokenizer.decode(new[row].tolist(), skip_special_tokens=True)
                out[i] = JudgeReply(text=text, attempts=1)
            self.stats["requests"] += len(idx)
            bar.update(len(idx))
        bar.close()
        return [r for r in out if r is not None]
