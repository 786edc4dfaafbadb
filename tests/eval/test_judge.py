"""The judge client against a real chat-completions server on 127.0.0.1, and the local HF judge.

The server (``http.server.ThreadingHTTPServer`` in a thread, port 0) scripts its behaviour per
prompt: the text after ``SCRIPT:`` in the last message picks it (normal, 429 with Retry-After,
500 once, a hang past the client timeout, malformed JSON, ...). It records every request with its
arrival time and measures how many were in flight at once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import urllib.request
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import shared_data

from lpoi.eval.judge import HFJudge, JudgeConfigError, OpenAIJudge, parse_retry_after

REPO = Path(__file__).resolve().parents[2]
os.environ.setdefault("NLTK_DATA", str(shared_data.SHARED / "nltk_data"))
# nltk reads NLTK_DATA once, at import; another test module may have imported it before this line
import nltk
from headtree import committed  # noqa: E402

if os.environ["NLTK_DATA"] not in nltk.data.path:
    nltk.data.path.append(os.environ["NLTK_DATA"])

KEY_ENV = "LPOI_TEST_JUDGE_KEY"
SECRET = "sk-lpoi-TESTSECRET-9f8e7d6c5b4a3210"


# ---------------------------------------------------------------------------------------------- server


class ChatServer:
    """A chat-completions endpoint with scripted replies; ``replies`` maps a script name to a rule."""

    def __init__(self, tls_cert: Path | None = None):
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.in_flight = 0
        self.max_in_flight = 0
        self.attempts: dict[str, int] = {}
        self.reply_for = None  # optional callable(content) -> str, for benchmark integration tests
        self.delay = 0.0  # seconds a "sleepy" request takes
        self.replied = 0  # "sleepy" replies sent in full
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep pytest output clean
                pass

            def do_POST(self):
                with server.lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.handle(self)
                finally:
                    with server.lock:
                        server.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls_cert is not None:  # a PEM holding the key and the self-signed certificate for 127.0.0.1
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(tls_cert)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def handle(self, h: BaseHTTPRequestHandler) -> None:
        n = int(h.headers.get("Content-Length", "0"))
        body = json.loads(h.rfile.read(n))
        content = body["messages"][-1]["content"]
        m = re.search(r"SCRIPT:(\w+)", content)
        script = m.group(1) if m else "normal"
        with self.lock:
            attempt = self.attempts[content] = self.attempts.get(content, 0) + 1
            self.requests.append(
                {"t": time.monotonic(), "path": h.path, "auth": h.headers.get("Authorization"), "body": body,
                 "script": script, "attempt": attempt}
            )

        def send(status: int, payload: bytes, headers: dict | None = None) -> None:
            h.send_response(status)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(payload)

        def ok(text: str) -> None:
            send(200, json.dumps({
                "id": "cmpl-test", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
            }).encode())

        if self.reply_for is not None and not m:
            text = self.reply_for(content)
            if text == "<<MALFORMED>>":
                send(200, b"{not json")
            else:
                ok(text)
        elif script == "normal":
            ok(f"echo <{content}> Rating: 4")
        elif script == "r429" and attempt == 1:
            send(429, b'{"error": "rate limited"}', {"Retry-After": "1"})
        elif script == "r429big" and attempt == 1:
            send(429, b'{"error": "rate limited"}', {"Retry-After": "100"})
        elif script == "e500" and attempt == 1:
            send(500, b'{"error": "boom"}')
        elif script == "always500":
            send(503, b'{"error": "unavailable"}')
        elif script == "hang" and attempt == 1:
            time.sleep(1.5)  # the client times out at 0.5 s
            try:
                ok("too late")
            except OSError:
                pass
        elif script == "malformed":
            send(200, b"{this is not json")
        elif script == "nochoices":
            send(200, json.dumps({"id": "x", "object": "chat.completion"}).encode())
        elif script == "echokey400":  # a server that echoes the key (OpenAI echoes a masked one)
            auth = h.headers.get("Authorization", "")
            send(400, json.dumps({"error": f"bad request from key {auth[7:]}, prefix {auth[7:19]}"}).encode())
        elif script == "slow":
            time.sleep(0.2)
            ok("slow ok")
        elif script in ("closemid", "alwaysclosemid") and (attempt == 1 or script == "alwaysclosemid"):
            payload = json.dumps({"choices": [{"message": {"content": "cut short Rating: 4"}}]}).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(payload)))
            h.end_headers()
            h.wfile.write(payload[: len(payload) // 2])  # then the handler returns and the socket closes
        elif script in ("trickle", "alwaystrickle") and (attempt == 1 or script == "alwaystrickle"):
            payload = json.dumps({"choices": [{"message": {"content": "slowly Rating: 4"}}]}).encode()
            raw = (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                   + str(len(payload)).encode() + b"\r\n\r\n" + payload)
            try:  # one byte per 50 ms: every read succeeds well within the per-read timeout
                for i in range(len(raw)):
                    h.wfile.write(raw[i : i + 1])
                    h.wfile.flush()
                    time.sleep(0.05)
            except OSError:  # the client gave up and shut the socket
                pass
        elif script == "sleepy":  # a slow judge (a paid API under load): Rating: 4 after ``delay`` seconds
            time.sleep(self.delay)
            try:
                ok("Rating: 4")
            except OSError:  # the client shut the socket (an interrupt)
                return
            with self.lock:
                self.replied += 1
        elif script == "echoheaders":  # a debugging proxy that echoes the request into the reply
            ok(f"you sent {dict(h.headers)!r} Rating: 4")
        else:
            ok(f"ok after {attempt} attempts")

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    with ChatServer() as s:
        yield s


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)
    return SECRET


def make_judge(server: ChatServer, tmp_path: Path | None = None, **kw) -> OpenAIJudge:
    args = {"api_key_env": KEY_ENV, "max_concurrency": 4, "timeout": 5.0, "max_retries": 3, "backoff_base": 0.01,
            "backoff_max": 0.05, "seed": 0}
    if tmp_path is not None:
        args["cache_dir"] = tmp_path / "judge_cache"
    args.update(kw)
    return OpenAIJudge(server.base_url, "judge-model", **args)


# ---------------------------------------------------------------------------------------------- protocol


def test_normal_reply_and_request_format(server, key):
    judge = make_judge(server)
    [r] = judge.complete_many(["hello SCRIPT:normal"])
    assert r.ok and r.text == "echo <hello SCRIPT:normal> Rating: 4" and not r.cached and r.attempts == 1
    [req] = server.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["auth"] == f"Bearer {SECRET}"  # the key is sent, only in the header
    assert req["body"]["model"] == "judge-model"
    assert req["body"]["temperature"] == 0  # the official judge runs at temperature 0
    assert req["body"]["messages"] == [{"role": "user", "content": "hello SCRIPT:normal"}]


def test_429_retry_after_is_honoured(server, key):
    judge = make_judge(server)
    [r] = judge.complete_many(["limit me SCRIPT:r429"])
    assert r.ok and r.attempts == 2
    t1, t2 = (q["t"] for q in server.requests)
    assert t2 - t1 >= 0.95  # Retry-After: 1, while the exponential backoff alone would wait <= 0.05 s


@pytest.mark.timeout(60)  # a hang guard, not a timing: uncapped, Retry-After: 100 would wait 100 s
def test_retry_after_is_capped(server, key):
    judge = make_judge(server, retry_after_max=0.2)
    [r] = judge.complete_many(["SCRIPT:r429big"])
    assert r.ok and r.attempts == 2
    t1, t2 = (q["t"] for q in server.requests)
    assert t2 - t1 >= 0.19


def test_500_then_success(server, key):
    [r] = make_judge(server).complete_many(["SCRIPT:e500"])
    assert r.ok and r.text == "ok after 2 attempts" and r.attempts == 2
    assert len(server.requests) == 2


@pytest.mark.timeout(30)  # a hang guard (the retry, not the 1.5 s hang, ends it), not a timing
def test_hang_past_timeout_then_success(server, key):
    judge = make_judge(server, timeout=0.5)
    [r] = judge.complete_many(["SCRIPT:hang"])
    assert r.ok and r.text == "ok after 2 attempts" and r.attempts == 2
    # the text proves the late reply was not used; the server's clock, that the client waited out its timeout
    t1, t2 = (q["t"] for q in server.requests)
    assert t2 - t1 >= 0.5


def test_retries_exhausted_is_an_error_not_an_endless_loop(server, key):
    [r] = make_judge(server, max_retries=2).complete_many(["SCRIPT:always500"])
    assert not r.ok and r.error == "retries_exhausted" and r.text is None
    assert len(server.requests) == 3  # first try + 2 retries


def test_connection_closed_mid_body_is_retried(server, key):
    """Content-Length promised more than arrived: transient (retried), never 'malformed_json'."""
    [r] = make_judge(server).complete_many(["SCRIPT:closemid"])
    assert r.ok and r.text == "ok after 2 attempts" and r.attempts == 2
    [r] = make_judge(server, max_retries=1).complete_many(["SCRIPT:alwaysclosemid"])
    assert r.error == "retries_exhausted" and "closed mid-body" in r.detail and r.attempts == 2


def test_deadline_bounds_a_trickling_server(server, key):
    """A reply trickled a byte per 50 ms never trips the 0.5 s per-read timeout (it would take ~7 s);
    the 1 s deadline ends the attempt, and the retry gets the normal reply."""
    judge = make_judge(server, timeout=0.5, deadline=1.0)
    t0 = time.monotonic()
    [r] = judge.complete_many(["SCRIPT:trickle"])
    took = time.monotonic() - t0
    assert r.ok and r.text == "ok after 2 attempts" and r.attempts == 2
    assert 1.0 <= took < 2.5, took
    t0 = time.monotonic()
    [r] = make_judge(server, timeout=0.5, deadline=0.5, max_retries=1).complete_many(["SCRIPT:alwaystrickle"])
    assert r.error == "retries_exhausted" and "0.5 s deadline" in r.detail and r.attempts == 2
    assert time.monotonic() - t0 < 2.0


def _self_signed(tmp_path: Path) -> Path:
    """A PEM with a fresh EC key and a certificate for IP 127.0.0.1 (cryptography, no network)."""
    import datetime
    import ipaddress

    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    k = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(k.public_key())
            .serial_number(1).not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(k, hashes.SHA256()))
    pem = tmp_path / "localhost.pem"
    pem.write_bytes(k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM))
    return pem


def test_https_with_verification_and_deadline(key, tmp_path, monkeypatch):
    """The deadline's connection classes keep TLS as urllib does it: the certificate is verified (trusted
    here through SSL_CERT_FILE), replies arrive, and a trickling TLS server is cut at the deadline."""
    pem = _self_signed(tmp_path)
    with ChatServer(tls_cert=pem) as tls:
        with pytest.raises(Exception):  # not trusted yet: verification is on
            urllib.request.urlopen(tls.base_url, timeout=5)
        monkeypatch.setenv("SSL_CERT_FILE", str(pem))
        judge = make_judge(tls, timeout=0.5, deadline=1.0)
        [r] = judge.complete_many(["hello SCRIPT:normal"])
        assert r.ok and r.text == "echo <hello SCRIPT:normal> Rating: 4"
        t0 = time.monotonic()
        [r] = judge.complete_many(["SCRIPT:trickle"])
        assert r.ok and r.attempts == 2 and 1.0 <= time.monotonic() - t0 < 2.5


@pytest.mark.parametrize("suffix", ["?api-version=2024-06-01", "/?api-version=2024-06-01",
                                    "/chat/completions?api-version=2024-06-01"])
def test_base_url_with_a_query_string(server, key, suffix):
    """Azure-style endpoints: the path gets /chat/completions, the query stays a query; neither label nor
    cache key carries the query (it may hold credentials)."""
    judge = OpenAIJudge(server.base_url + suffix, "judge-model", api_key_env=KEY_ENV)
    [r] = judge.complete_many(["q SCRIPT:normal"])
    assert r.ok and server.requests[-1]["path"] == "/v1/chat/completions?api-version=2024-06-01"
    assert "api-version" not in judge.label and judge.endpoint.endswith("/v1/chat/completions")


def test_off_scale_ratings_keep_the_official_score_and_are_counted(server, key, tmp_path):
    """'Rating: 10' and 'Rating: 65' score 1 and 6 by the official substring rule (kept), 'Rating: 7' finds
    nothing (0); all three are counted in n_rating_off_scale. Ratings [1, 6, 0, 4] -> score 11/4."""
    from lpoi.eval.benchmarks import mmhal

    replies = {0: "Rating: 10", 1: "Rating: 65, superb", 2: "rating: 7", 3: "Rating: 4"}
    server.reply_for = lambda content: replies[int(re.search(r"answer number (\d)", content).group(1))]
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": i, "response": f"answer number {i}"}) + "\n" for i in range(4)))
    m = mmhal.score_file(answers, REPO / "data/sample/bench/mmhal/mmhal-bench_answer_template.json",
                         tmp_path / "m.json", make_judge(server))
    assert m["per_type"] == {"attribute": 1, "adversarial": 6, "comparison": 0, "counting": 4}
    assert m["score"] == pytest.approx(11 / 4)
    assert m["n_rating_off_scale"] == 3 and m["n_rating_unparsed"] == 1


@pytest.mark.parametrize("script,reason", [("malformed", "malformed_json"), ("nochoices", "malformed_reply")])
def test_malformed_reply_is_recorded_not_raised(server, key, tmp_path, script, reason):
    judge = make_judge(server, tmp_path)
    replies = judge.complete_many([f"SCRIPT:{script}", "fine SCRIPT:normal"])
    assert replies[0].error == reason and replies[0].text is None
    assert replies[1].ok
    assert judge.stats["errors"] == 1
    # errors are not cached: a re-run asks again (and only for that one)
    before = len(server.requests)
    again = make_judge(server, tmp_path).complete_many([f"SCRIPT:{script}", "fine SCRIPT:normal"])
    assert again[0].error == reason and again[1].cached
    assert len(server.requests) == before + 1


def test_non_retryable_status_is_not_retried(server, key):
    [r] = make_judge(server).complete_many(["SCRIPT:echokey400"])
    assert r.error == "http_400" and len(server.requests) == 1


def test_cache_hit_on_rerun_sends_no_request(server, key, tmp_path):
    prompts = ["one SCRIPT:normal", "two SCRIPT:normal", [{"role": "system", "content": "three SCRIPT:normal"}]]
    first = make_judge(server, tmp_path).complete_many(prompts)
    assert [r.cached for r in first] == [False] * 3 and len(server.requests) == 3
    files = sorted((tmp_path / "judge_cache").rglob("*.json"))
    assert len(files) == 3 and all(json.loads(f.read_text())["text"] for f in files)
    second = make_judge(server, tmp_path).complete_many(prompts)  # a fresh client, as in a re-run
    assert len(server.requests) == 3  # zero new requests
    assert [r.text for r in second] == [r.text for r in first] and all(r.cached for r in second)
    # another model is another cache key
    OpenAIJudge(server.base_url, "other-model", api_key_env=KEY_ENV, cache_dir=tmp_path / "judge_cache").complete_many(
        prompts[:1]
    )
    assert len(server.requests) == 4


def test_duplicate_prompts_in_one_call_are_sent_once(server, key):
    replies = make_judge(server).complete_many(["same SCRIPT:normal"] * 3)
    assert len(server.requests) == 1 and len({r.text for r in replies}) == 1 and len(replies) == 3


def test_bounded_concurrency(server, key):
    judge = make_judge(server, max_concurrency=3)
    t0 = time.monotonic()
    replies = judge.complete_many([f"job {i} SCRIPT:slow" for i in range(12)])
    assert all(r.ok for r in replies) and len(server.requests) == 12
    assert server.max_in_flight == 3  # never more than 3 at once, and the pool is used
    assert time.monotonic() - t0 >= 4 * 0.2 - 0.05  # 12 jobs / 3 lanes x 0.2 s


def test_replies_keep_prompt_order(server, key):
    prompts = [f"order {i} SCRIPT:normal" for i in range(10)]
    replies = make_judge(server, max_concurrency=4).complete_many(prompts)
    assert [r.text for r in replies] == [f"echo <{p}> Rating: 4" for p in prompts]


# ---------------------------------------------------------------------------------------------- config & key


def test_missing_key_variable_is_a_clear_error(monkeypatch, server):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.setenv("SOME_OTHER_VAR", "other-value")
    with pytest.raises(JudgeConfigError) as e:
        OpenAIJudge(server.base_url, "m", api_key_env=KEY_ENV)
    assert KEY_ENV in str(e.value) and "other-value" not in str(e.value)


def test_no_key_variable_sends_no_authorization(server, monkeypatch):
    [r] = OpenAIJudge(server.base_url, "m", api_key_env=None).complete_many(["SCRIPT:normal"])
    assert r.ok and server.requests[0]["auth"] is None


@pytest.mark.parametrize(
    "kw,needle",
    [({"max_concurrency": 0}, "max_concurrency"), ({"timeout": -1}, "timeout"), ({"max_retries": -1}, "max_retries")],
)
def test_bad_numbers_are_rejected(key, server, kw, needle):
    with pytest.raises(JudgeConfigError, match=needle):
        OpenAIJudge(server.base_url, "m", api_key_env=KEY_ENV, **kw)


def test_bad_base_url_message_does_not_echo_credentials(key):
    with pytest.raises(JudgeConfigError) as e:
        OpenAIJudge("ftp://user:pw-secret@host/v1", "m", api_key_env=KEY_ENV)
    assert "pw-secret" not in str(e.value)


def test_key_never_leaks(server, key, tmp_path, caplog):
    """Everything produced — replies, errors, repr, logs, cache files, metrics — is grepped for the key."""
    caplog.set_level(logging.DEBUG)
    judge = make_judge(server, tmp_path, max_retries=1)
    prompts = ["a SCRIPT:normal", "b SCRIPT:e500", "c SCRIPT:malformed", "d SCRIPT:echokey400", "e SCRIPT:always500",
               "f SCRIPT:r429", "g SCRIPT:echoheaders"]
    replies = judge.complete_many(prompts)
    assert server.requests[0]["auth"] == f"Bearer {SECRET}"  # the key was in use
    assert {r.error for r in replies} == {None, "malformed_json", "http_400", "retries_exhausted"}
    echoed = replies[-1]
    assert echoed.ok and "'Authorization': 'Bearer [REDACTED]'" in echoed.text  # the reply itself is scrubbed
    # the MMHal scorer on top, so metrics/details files are covered too
    from lpoi.eval.benchmarks import mmhal

    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": i, "response": f"r{i} SCRIPT:{s}"}) + "\n"
                               for i, s in enumerate(["normal", "echokey400", "malformed", "echoheaders"])))
    mmhal.score_file(answers, REPO / "data/sample/bench/mmhal/mmhal-bench_answer_template.json",
                     tmp_path / "metrics.json", judge, details_path=tmp_path / "details.jsonl")
    produced = [repr(judge), str(judge), repr(vars(judge)), caplog.text]
    produced += [f"{r!r} {r.detail} {r.text}" for r in replies]
    produced += [p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()]
    assert len(produced) > 10
    for text in produced:
        assert SECRET not in text
        assert SECRET[:12] not in text  # the echoed prefix is scrubbed too
    import pickle

    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(judge)
    # the echoed error body is kept (scrubbed), so the detail is still useful
    assert any("bad request from key [REDACTED]" in (r.detail or "") for r in replies)


def test_cache_entries_with_the_key_are_scrubbed_when_read(server, key, tmp_path):
    """A cache written before replies were scrubbed is served scrubbed (and no request is sent)."""
    judge = make_judge(server, tmp_path)
    prompt = "old SCRIPT:normal"
    judge.cache.put(judge.cache_key(prompt), {"text": f"echo Authorization: Bearer {SECRET} Rating: 4"})
    [r] = make_judge(server, tmp_path).complete_many([prompt])
    assert r.cached and not server.requests
    assert SECRET not in r.text and SECRET[:12] not in r.text and "Bearer [REDACTED]" in r.text


def test_parse_retry_after():
    now = datetime(2015, 10, 21, 7, 28, 0, tzinfo=timezone.utc)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-3") == 0.0
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:05 GMT", now=now) == 5.0  # 07:28:05 - 07:28:00
    assert parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now=now) == 0.0  # in the past
    assert parse_retry_after("nan") is None
    assert parse_retry_after("tomorrow") is None
    assert parse_retry_after(None) is None and parse_retry_after("") is None


# ---------------------------------------------------------------------------------------------- MMHal over loopback


def test_mmhal_score_file_over_loopback(server, key, tmp_path):
    """The official rating parse and per-type aggregation, end to end through the HTTP judge.

    Mini template order = the official type order (ids 0..7). Scripted judge replies per id:
      0 attribute   "... Rating: 5, very informative"          -> 5
      1 adversarial "Rating: 2"                                  -> 2
      2 comparison  "rating: 6"                                  -> 6
      3 counting    "Rating: 1 ... no, Rating: 4" (two ratings)  -> 0 (official: several found -> 0)
      4 relation    "I cannot decide."                           -> 0 (none found)
      5 environment malformed JSON body                          -> judge error, left out
      6 holistic    "RATING: 3"                                  -> 3 (case-insensitive)
      7 other       "rating:4" (no space)                        -> 0 (official needs "rating: 4")
    Scored: [5, 2, 6, 0, 0, 3, 0], n = 7. score = 16/7. Hallucination (< 3): 2, 0, 0, 0 -> 4/7.
    informativeness: s >= 3 -> s - 3 (5->2, 6->3, 3->0), else s (2, 0, 0, 0): 7 / 7 / 3 * 100 = 33.33.
    Unparsed (zero or several ratings): ids 3, 4, 7 -> 3. Two bad answer lines are rejected.
    """
    from lpoi.eval.benchmarks import mmhal

    replies = {0: "Good. Rating: 5, very informative", 1: "Rating: 2", 2: "rating: 6",
               3: "Rating: 1 ... no, Rating: 4", 4: "I cannot decide.", 5: "<<MALFORMED>>",
               6: "RATING: 3", 7: "rating:4"}

    def reply_for(content: str) -> str:
        resp = content.split("### LMM Response to Evaluate\n", 1)[1]
        return replies[int(re.search(r"answer number (\d)", resp).group(1))]

    server.reply_for = reply_for
    answers = tmp_path / "answers.jsonl"
    lines = [{"id": i, "response": f"answer number {i}"} for i in range(8)]
    lines += [{"id": 99, "response": "out of range"}, {"id": 2, "response": "duplicate"}]
    answers.write_text("".join(json.dumps(x) + "\n" for x in lines))
    template = REPO / "data/sample/bench/mmhal/mmhal-bench_answer_template.json"
    judge = make_judge(server, tmp_path)
    m = mmhal.score_file(answers, template, tmp_path / "m.json", judge)
    assert m["n"] == 7 and m["n_judge_errors"] == 1 and m["judge_errors"] == {"malformed_json": 1}
    assert m["score"] == pytest.approx(16 / 7)
    assert m["hallucination_rate"] == pytest.approx(4 / 7)
    assert m["informativeness"] == pytest.approx(100 * 7 / 7 / 3)
    assert m["per_type"] == {"attribute": 5, "adversarial": 2, "comparison": 6, "counting": 0, "relation": 0,
                             "holistic": 3, "other": 0}
    assert m["n_rating_unparsed"] == 3
    assert m["rejects"] == {"id_out_of_range": 1, "duplicate_id": 1}
    assert json.loads((tmp_path / "m.json").read_text()) == m
    assert m["judge"].startswith("openai-compatible:judge-model@http://127.0.0.1")
    # the prompt is the official template filled in order: contents, question, gt answer, response
    sent = next(q for q in server.requests if "answer number 0" in q["body"]["messages"][0]["content"])
    t = json.loads(template.read_text())[0]
    assert sent["body"]["messages"][0]["content"] == mmhal.JUDGE_TEMPLATE.format(
        ", ".join(t["image_content"]), t["question"], t["gt_answer"], "answer number 0")
    # re-run: everything cached except the failed one
    n_before = len(server.requests)
    m2 = mmhal.score_file(answers, template, tmp_path / "m2.json", make_judge(server, tmp_path))
    assert len(server.requests) == n_before + 1 and m2["score"] == m["score"]


# ---------------------------------------------------------------------------------------------- Object HalBench llm extractor


def test_objhal_llm_extractor_over_loopback(server, key, tmp_path):
    """The official object-extraction protocol through the HTTP judge, on the committed mini set.

    Ground truth (mini set instances + captions, see data/sample/bench/objhal/make_mini.py):
    900000001 {dog, frisbee} ("puppy" -> dog; "flying disc", "lawn", "park" are not COCO words);
    900000003 {toilet, sink} ("toilet seat" -> toilet, "seat" dropped next to "toilet"; "wash basin" not COCO);
    900000004 {dining table, pizza, wine glass}; 900000009 {boat} ("sailboat" -> boat).
    Replies:
      900000001 '["dog", "cat", "frisbee", "lawn"]'         -> dog, cat, frisbee (cat hallucinated)
      900000004 ```json block (RLAIF-V) '["pizza", "wine glasses", "wooden dining table"]'
                -> pizza, wine glass ("wine glass" two-word), dining table (two-word) — all correct
      900000009 answer "Yes." has <= 3 words                -> no objects, no request (official)
      900000003 'Objects:\n["toilet seat", "sink", "chair"]' -> last-line parse: toilet, sink, chair (hallucinated)
      900000010 "I think: clock"                            -> not a JSON list: extraction error, left out
    Scored 4 responses; with >= 1 COCO object: 3; hallucinated: 2 -> CHAIRs 50, CHAIRs_refine 66.67.
    Mentions 3 + 3 + 0 + 3 = 9, hallucinated 2 -> CHAIRi 22.22.
    Recall: correct classes 2 + 3 + 0 + 2 = 7 over gt sizes 2 + 3 + 1 + 2 = 8 -> 87.5.
    """
    from lpoi.eval.benchmarks import objhal

    answers = {
        900000001: ("A dog and a cat play with a frisbee on the lawn.", '["dog", "cat", "frisbee", "lawn"]'),
        900000004: ("There is a pizza, two wine glasses and a dining table.",
                    'Sure:\n```json\n["pizza", "wine glasses", "wooden dining table"]\n```'),
        900000009: ("Yes.", None),
        900000003: ("A toilet seat next to a sink and a chair.", 'Objects:\n["toilet seat", "sink", "chair"]'),
        900000010: ("The clock on the wall shows noon.", "I think: clock"),
    }

    def reply_for(content: str) -> str:
        for resp, reply in answers.values():
            if f"\n{resp}\n" in content:
                return reply
        raise AssertionError("unexpected prompt")

    server.reply_for = reply_for
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"image_id": k, "question": "Describe the image.", "response": v[0]}) + "\n"
                            for k, v in answers.items()))
    judge = make_judge(server, tmp_path)
    m = objhal.score_file(path, REPO / "data/sample/bench/objhal", tmp_path / "m.json", extractor="llm", judge=judge,
                          cache_dir=tmp_path / "gt")
    assert len(server.requests) == 4  # the short answer was never sent
    sent = server.requests[0]["body"]["messages"]
    assert len(sent) == 1 and sent[0]["role"] == "system" and "<image> Describe the image." in sent[0]["content"]
    assert m["n"] == 4 and m["n_with_coco_objects"] == 3 and m["n_hallucinated_responses"] == 2
    assert m["CHAIRs"] == pytest.approx(50.0) and m["CHAIRs_refine"] == pytest.approx(200 / 3)
    assert m["n_mentions"] == 9 and m["n_hallucinated_mentions"] == 2 and m["CHAIRi"] == pytest.approx(200 / 9)
    assert m["recall"] == pytest.approx(87.5)
    assert m["n_extract_errors"] == 1 and m["extract_errors"] == {"unparsable_object_list": 1}
    assert m["extractor"] == "llm" and m["judge"] == judge.label


# ---------------------------------------------------------------------------------------------- the authors' judges


def _score_params(server: ChatServer, judge_model, objhal_model=None):
    """params.yaml with the openai judge at the loopback server and the llm extractor."""
    import yaml

    from lpoi.config import validate

    raw = yaml.safe_load(committed("params.yaml").read_text())
    raw["judge"].update(backend="openai", base_url=server.base_url, model=judge_model, api_key_env=KEY_ENV)
    raw["objhal"] = {"extractor": "llm", "model": objhal_model}
    return validate(raw)


@pytest.mark.parametrize(("judge_model", "objhal_model", "mmhal_sent", "objhal_sent"), [
    (None, None, "gpt-4-0314", "gpt-3.5-turbo-0613"),  # the authors' (OFFICIAL_SETUP.md: LLaVA-RLHF, RLHF-V)
    ("gpt-4o-stand-in", None, "gpt-4o-stand-in", "gpt-4o-stand-in"),  # one stand-in for both
    (None, "local-extractor", "gpt-4-0314", "local-extractor"),
])
def test_default_judges_are_the_authors(server, key, tmp_path, monkeypatch, judge_model, objhal_model, mmhal_sent,
                                        objhal_sent):
    """With ``judge.model: null`` the openai backend asks for the models the authors' scorers called: MMHal-Bench
    ``gpt-4-0314`` (eval_gpt_mmhal.py), Object HalBench extraction ``gpt-3.5-turbo-0613`` (eval_gpt_obj_halbench.py
    --use_gpt); ``objhal.model`` overrides the extractor only. The request bodies and the metrics' judge label
    (what REPORT.md prints) name the model used."""
    from lpoi.eval.scoring import ScoreJob, run_score

    monkeypatch.chdir(REPO)  # params.yaml's bench paths are relative to the repository
    server.reply_for = lambda content: '["dog"]' if "Describe" in content else "Fine. Rating: 4"
    p = _score_params(server, judge_model, objhal_model)
    obj = tmp_path / "objhal.jsonl"
    obj.write_text(json.dumps({"image_id": 900000001, "question": "Describe the image.",
                               "response": "A dog plays with a frisbee on the lawn."}) + "\n")
    m_obj = run_score(ScoreJob("objhal", obj, tmp_path / "objhal.json", work=tmp_path / "w_obj",
                               coco_dir=REPO / "data/sample/bench/objhal"), p)
    mm = tmp_path / "mmhal.jsonl"
    mm.write_text(json.dumps({"id": 0, "response": "a dog"}) + "\n")
    m_mm = run_score(ScoreJob("mmhal", mm, tmp_path / "mmhal.json", work=tmp_path / "w_mm"), p)
    sent = [r["body"]["model"] for r in server.requests]
    assert sent == [objhal_sent, mmhal_sent]
    assert m_obj["judge"].startswith(f"openai-compatible:{objhal_sent}@http://127.0.0.1")
    assert m_mm["judge"].startswith(f"openai-compatible:{mmhal_sent}@http://127.0.0.1")


def test_a_local_judge_needs_a_model_name():
    from lpoi.config import ParamsError, validate

    with pytest.raises(ParamsError, match="judge.model is required when judge.backend is 'hf'"):
        validate({"judge": {"backend": "hf", "model": None}})
    assert validate({}).judge.model == "tiny/llama"  # the embedded default is unchanged


# ---------------------------------------------------------------------------------------------- cache integrity


MINI_TEMPLATE = REPO / "data/sample/bench/mmhal/mmhal-bench_answer_template.json"


def _cache_file(judge: OpenAIJudge, prompt) -> Path:
    return judge.cache.root / judge.cache_key(prompt)[:2] / f"{judge.cache_key(prompt)}.json"


def test_an_edited_cached_reply_is_asked_for_again(server, key, tmp_path, caplog):
    """A rating edited in the cache would change mmhal.score; it is detected (the cache's journal holds the
    sha256 of every file it wrote), asked for again and stored afresh: the score is the judge's."""
    from lpoi.eval.benchmarks import mmhal

    server.reply_for = lambda content: "Rating: 2"
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": i, "response": f"answer {i}"}) + "\n" for i in range(4)))
    m = mmhal.score_file(answers, MINI_TEMPLATE, tmp_path / "m.json", make_judge(server, tmp_path))
    assert m["score"] == 2 and len(server.requests) == 4
    judge = make_judge(server, tmp_path)
    f = _cache_file(judge, mmhal.build_prompt(json.loads(MINI_TEMPLATE.read_text())[1], "answer 1"))
    rec = json.loads(f.read_text())
    rec["text"] = "Rating: 6"  # a hand edit that would lift the score
    f.write_text(json.dumps(rec, indent=2) + "\n")
    caplog.set_level(logging.WARNING, logger="lpoi.eval.judge")
    m2 = mmhal.score_file(answers, MINI_TEMPLATE, tmp_path / "m2.json", judge)
    assert m2["score"] == 2 and len(server.requests) == 5  # the edited reply only, asked for again
    assert judge.stats["cache_hits"] == 3 and judge.stats["cache_rejected"] == 1
    assert "1 cached reply" in caplog.text and f.name in caplog.text
    assert json.loads(f.read_text())["text"] == "Rating: 2"  # healed
    mmhal.score_file(answers, MINI_TEMPLATE, tmp_path / "m3.json", make_judge(server, tmp_path))
    assert len(server.requests) == 5  # and trusted again


def test_a_cache_file_without_a_journal_entry_is_not_trusted(server, key, tmp_path):
    """A reply file the cache did not write (copied in, or from a cache without a journal) is asked for again."""
    judge = make_judge(server, tmp_path)
    [first] = judge.complete_many(["q SCRIPT:normal"])
    (tmp_path / "judge_cache" / "journal.jsonl").unlink()
    [again] = make_judge(server, tmp_path).complete_many(["q SCRIPT:normal"])
    assert not again.cached and again.text == first.text and len(server.requests) == 2
    [third] = make_judge(server, tmp_path).complete_many(["q SCRIPT:normal"])
    assert third.cached and len(server.requests) == 2


# ---------------------------------------------------------------------------------------------- Ctrl-C, all-fail


def _score_cmd(tmp_path: Path, server: ChatServer, answers: Path, template: Path, max_concurrency: int) -> list[str]:
    import sys

    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["judge"].update({"api_key_env": KEY_ENV, "max_concurrency": max_concurrency, "max_retries": 0,
                            "timeout": 30, "deadline": 60})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return [sys.executable, str(REPO / "stages/score.py"), "mmhal", "--answers", str(answers), "--template",
            str(template), "--out", str(tmp_path / "mmhal.json"), "--work", str(tmp_path / "work"),
            "--judge-base-url", server.base_url, "--judge-model", "judge-model", "--params", str(tmp_path / "params.yaml")]


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_an_interrupt_stops_the_requests_at_once_and_keeps_the_replies(server, key, tmp_path, sig):
    """Ctrl-C (or a kill) while a slow HTTP judge scores 40 items, two at a time: no new request goes out,
    the stage ends within seconds with the usual line, the replies it got are cached, and the re-run asks
    only for the rest. (Before: the thread pool's exit sent every queued request first, for minutes.)"""
    import signal
    import subprocess

    items = json.loads(MINI_TEMPLATE.read_text())
    template = tmp_path / "template.json"
    template.write_text(json.dumps([items[i % len(items)] for i in range(40)]))
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": i, "response": f"answer {i} SCRIPT:sleepy"}) + "\n"
                               for i in range(40)))
    cmd = _score_cmd(tmp_path, server, answers, template, max_concurrency=2)
    server.delay = 1.0
    env = {**os.environ, "LPOI_DEBUG": ""}
    # SIGINT as a terminal delivers it: a pytest started in the background (`pytest &`) inherits an *ignored*
    # SIGINT, and Python then installs no KeyboardInterrupt handler in the child
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        t_end = time.monotonic() + 120  # the start-up (imports) on a loaded machine
        while server.replied < 3 and proc.poll() is None and time.monotonic() < t_end:
            time.sleep(0.02)
        assert server.replied >= 3, proc.communicate(timeout=5)
        with server.lock:
            sent, replied = len(server.requests), server.replied
        proc.send_signal(getattr(signal, sig))
        try:
            _, err = proc.communicate(timeout=60)  # a hang guard: it takes well under a second when idle
        except subprocess.TimeoutExpired:
            pytest.fail(f"score did not stop within 60 s of {sig}; {len(server.requests) - sent} requests since")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # at most those already on their way (max_concurrency = 2), and on a loaded machine, where the signal
    # handler may run a moment after the snapshot above, the 2 that replaced them (each reply takes 1 s): a
    # queue that kept sending would have sent ~20 more by the time the stage exits
    assert len(server.requests) - sent <= 4, (len(server.requests), sent, err)
    assert proc.returncode != 0, err
    assert err.rstrip().splitlines()[-1] == "interrupted (finished work is kept; re-run to resume)", err
    assert "Traceback" not in err
    cached = list((tmp_path / "work" / "judge_cache").glob("??/*.json"))
    assert replied - 2 <= len(cached) <= len(server.requests)  # what arrived is kept (bar any cut mid-read)
    assert not (tmp_path / "mmhal.json").exists()

    server.delay = 0.0
    n_before = len(server.requests)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(server.requests) - n_before == 40 - len(cached)  # only the rest
    assert json.loads((tmp_path / "mmhal.json").read_text())["n"] == 40


def test_a_judge_that_fails_on_every_item_is_one_line(server, key, tmp_path):
    """Every item fails (here a 400 whose body echoes the key): one line naming the judge, its endpoint and
    the first error, the key scrubbed; before, a RuntimeError traceback."""
    import subprocess

    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": i, "response": f"r{i} SCRIPT:echokey400"}) + "\n" for i in range(8)))
    cmd = _score_cmd(tmp_path, server, answers, MINI_TEMPLATE, max_concurrency=4)
    done = subprocess.run(cmd, cwd=REPO, env={**os.environ, "LPOI_DEBUG": ""}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    last = done.stderr.rstrip().splitlines()[-1]
    assert last.startswith("error: MMHal-Bench: the judge openai-compatible:judge-model@" + server.base_url)
    assert "failed on all 8 items ({'http_400': 8})" in last
    assert "first error: http_400: HTTP 400:" in last and "bad request from key [REDACTED]" in last
    assert SECRET not in done.stderr and SECRET[:12] not in done.stderr


def test_objhal_extraction_that_fails_on_every_item_is_one_clear_error(server, key, tmp_path):
    from lpoi.eval.benchmarks import objhal
    from lpoi.eval.judge import JudgeFailed

    server.reply_for = lambda content: "I would rather not."
    path = tmp_path / "answers.jsonl"
    path.write_text("".join(json.dumps({"image_id": i, "question": "Describe the image.",
                                        "response": "A dog and a cat play with a frisbee."}) + "\n"
                            for i in (900000001, 900000003)))
    judge = make_judge(server)
    with pytest.raises(JudgeFailed) as e:
        objhal.score_file(path, REPO / "data/sample/bench/objhal", tmp_path / "m.json", extractor="llm", judge=judge,
                          cache_dir=tmp_path / "gt")
    msg = str(e.value)
    assert "\n" not in msg and judge.label in msg and "failed on all 2 items" in msg
    assert "first error: unparsable_object_list: 'I would rather not.'" in msg


# ---------------------------------------------------------------------------------------------- local HF judge


def _tiny_hf():
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["the", "a", "is", "of", "and", "to", "in", "rating", "judge", "answer", "image", "question", "dog", "cat", "yes", "no", "user", "assistant", "system", ":", ",", ".", "0", "1", "2", "3", "4", "5", "6", "###", "lmm", "response", "hallucination"]
    vocab = {"[PAD]": 0, "[UNK]": 1, "[BOS]": 2, "[EOS]": 3}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]",
                                  eos_token="[EOS]")
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096, pad_token_id=0,
                      bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval(), tok


def test_hf_judge_batched_equals_one_by_one_greedy():
    import torch

    model, tok = _tiny_hf()
    prompts = ["the dog", "a cat is in the image and the answer is yes . rating 3", "question : no",
               [{"role": "user", "content": "judge the answer of the image question rating 1 2 3 4 5 6"}], "yes"]
    judge = HFJudge(model, tok, max_new_tokens=6, batch_size=3, label="hf:tiny-llama (tiny random model: scores are meaningless)")
    replies = judge.complete_many(prompts)
    assert len(replies) == len(prompts) and all(isinstance(r.text, str) and r.ok for r in replies)
    # reference: plain generate on each prompt alone, no padding (plain text: no chat template)
    for p, r in zip(prompts, replies):
        text = p if isinstance(p, str) else p[0]["content"]
        ids = torch.tensor([tok(text)["input_ids"]])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False,
                             pad_token_id=0)
        assert r.text == tok.decode(out[0, ids.shape[1]:].tolist(), skip_special_tokens=True)
    assert any(r.text for r in replies)  # the random model does emit words
    assert "meaningless" in judge.label


def test_hf_judge_uses_the_chat_template():
    model, tok = _tiny_hf()
    tok.chat_template = ("{% for m in messages %}[BOS] {{ m['role'] }} : {{ m['content'] }} [EOS] {% endfor %}"
                         "{% if add_generation_prompt %}assistant :{% endif %}")
    judge = HFJudge(model, tok, max_new_tokens=3)
    assert judge.encode("the dog") == tok("[BOS] user : the dog [EOS] assistant :", add_special_tokens=False)["input_ids"]
    [r] = judge.complete_many(["the dog"])
    assert isinstance(r.text, str)


def test_hf_judge_scores_mmhal_mini_with_its_label(tmp_path):
    from lpoi.eval.benchmarks import mmhal

    model, tok = _tiny_hf()
    label = "hf:tiny-llama (tiny random model: scores are meaningless)"
    judge = HFJudge(model, tok, max_new_tokens=4, batch_size=4, label=label)
    answers = tmp_path / "a.jsonl"
    answers.write_text("".join(json.dumps({"id": i, "response": "a dog"}) + "\n" for i in range(8)))
    m = mmhal.score_file(answers, REPO / "data/sample/bench/mmhal/mmhal-bench_answer_template.json",
                         tmp_path / "m.json", judge)
    assert m["judge"] == label and m["n"] == 8 and m["n_judge_errors"] == 0
    assert 0 <= m["score"] <= 6 and set(m["per_type"]) == set(mmhal.QUESTION_TYPES)
