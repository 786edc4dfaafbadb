"""MMHal-Bench: judge prompt, the official rating parse, per-type aggregation, items.

The end-to-end scoring through a real HTTP judge is in test_judge.py
(``test_mmhal_score_file_over_loopback``, ``test_hf_judge_scores_mmhal_mini_with_its_label``).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from lpoi.eval.benchmarks import mmhal
from shared_data import shared_file

REPO = Path(__file__).resolve().parents[2]
MINI = REPO / "data" / "sample" / "bench" / "mmhal"
TEMPLATE = ("benchmarks", "mmhal_bench", "mmhal-bench_answer_template.json")  # the official file, in ../shared


def official_ratings(response: str) -> int:
    """The loop of LLaVA-RLHF Eval/eval_gpt_mmhal.py, written out independently of the module."""
    scores_found = []
    for s in range(7):
        if f"rating: {s}" in response.lower():
            scores_found.append(s)
    return scores_found[0] if len(scores_found) == 1 else 0


RATING_TABLE = [
    ("Rating: 6, very informative with good analysis or reasoning, no hallucination", 6),
    ("The response is accurate.\nRating: 5", 5),
    ("rating: 4", 4),
    ("RATING: 3", 3),
    ("Explanation ... - Rating: 2, very informative, with hallucination", 2),
    ("Rating: 1", 1),
    ("Rating: 0, not informative, with hallucination", 0),
    ("Rating: 2 ... on second thought Rating: 5", 0),  # two different ratings -> 0
    ("Rating: 4. I repeat, Rating: 4.", 4),  # the same rating twice is one score found
    ("No rating given.", 0),  # none -> 0
    ("rating:4", 0),  # needs "rating: " with the space
    ("Rating:  4", 0),  # two spaces do not match either
    ("Rating: 10", 1),  # substring semantics: "rating: 1" is in "rating: 10"
    ("Overall rating: 5/6", 5),
    ("Final Rating: **4**", 0),  # markdown around the digit breaks the substring
    ("- Rating: 6, ...\n- Rating: 5, ...\n- Rating: 4, ...", 0),  # an echoed option list -> 0
    ("", 0),
]


@pytest.mark.parametrize("reply,expected", RATING_TABLE)
def test_parse_rating_table(reply, expected):
    assert mmhal.parse_rating(reply) == expected
    assert official_ratings(reply) == expected  # the table itself matches the official loop


def test_find_ratings_lists_every_hit():
    assert mmhal.find_ratings("Rating: 2 ... Rating: 5") == [2, 5]
    assert mmhal.find_ratings("Rating: 10") == [1]  # "rating: 1" is a substring, "rating: 0" is not
    assert mmhal.find_ratings("nothing") == []


def test_aggregate_per_type():
    """Hand-computed: attribute [6, 2] -> 4.0; counting [0] -> 0; other [3, 3, 5] -> 11/3; one judge error.

    score = (6 + 2 + 0 + 3 + 3 + 5) / 6 = 19/6; hallucination (< 3): 2, 0 -> 2/6.
    informativeness: 6->3, 2->2, 0->0, 3->0, 3->0, 5->2 -> 7 / 6 / 3 * 100.
    """
    rows = [
        {"question_type": "attribute", "rating": 6},
        {"question_type": "counting", "rating": 0},
        {"question_type": "other", "rating": 3},
        {"question_type": "attribute", "rating": 2},
        {"question_type": "other", "rating": 3},
        {"question_type": "other", "rating": 5},
        {"question_type": "relation", "rating": None},  # judge error: left out
    ]
    m = mmhal.aggregate(rows)
    assert m["n"] == 6
    assert m["score"] == pytest.approx(19 / 6)
    assert m["hallucination_rate"] == pytest.approx(2 / 6)
    assert m["informativeness"] == pytest.approx(700 / 18)
    assert m["per_type"] == {"attribute": 4.0, "counting": 0.0, "other": pytest.approx(11 / 3)}
    assert list(m["per_type"]) == ["attribute", "counting", "other"]  # official type order
    assert m["per_type_n"] == {"attribute": 2, "counting": 1, "other": 3}


def test_type_field_grouping_equals_the_official_positional_grouping():
    """The official groups by i % 8; on the official template that is the question_type field."""
    template = mmhal.load_template(shared_file(*TEMPLATE))
    assert len(template) == 96
    ratings = [(i * 7 + 3) % 7 for i in range(96)]  # any fixed ratings
    official = [[] for _ in range(8)]
    for i in range(96):
        official[i % 8].append(ratings[i])
    official_means = [sum(x) / len(x) for x in official]
    ours = mmhal.aggregate([{"question_type": t["question_type"], "rating": r} for t, r in zip(template, ratings)])
    assert list(ours["per_type"]) == list(mmhal.QUESTION_TYPES)
    assert [ours["per_type"][t] for t in mmhal.QUESTION_TYPES] == pytest.approx(official_means)


def test_judge_template_is_verbatim():
    # sha256 of the `template` string of LLaVA-RLHF Eval/eval_gpt_mmhal.py, computed from the upstream source
    assert hashlib.sha256(mmhal.JUDGE_TEMPLATE.encode()).hexdigest() == (
        "2c73d8c50f1740d000fae62cfeed103c2f7a5bcfa904b27e6e09900e7ce600cc")
    assert mmhal.JUDGE_TEMPLATE.count("{}") == 4


def test_build_prompt_fills_the_four_slots_in_order():
    rec = {"image_content": ["Fire hydrant", "Tree"], "question": "Q?", "gt_answer": "GT.", "question_type": "x"}
    p = mmhal.build_prompt(rec, "My {braces} answer")
    tail = p.split("### Image Contents\n", 1)[1]
    assert tail == "Fire hydrant, Tree\n\n### Question\nQ?\n\n### Standard Human-Generated Answer\nGT.\n\n" \
                   "### LMM Response to Evaluate\nMy {braces} answer\n"


def test_items_on_the_mini_set():
    its = mmhal.items(MINI / "mmhal-bench_answer_template.json", MINI / "images")
    assert [i["id"] for i in its] == list(range(8))
    assert [i["question_type"] for i in its] == list(mmhal.QUESTION_TYPES)
    assert all(Path(i["image"]).is_file() and Path(i["image"]).parent == (MINI / "images").resolve() for i in its)
    assert its[0]["question"] == "What color is the fire hydrant cap in the picture?"
    assert len(mmhal.items(MINI / "mmhal-bench_answer_template.json", MINI / "images", limit=3)) == 3


def test_items_hf_layout_and_image_id_fallback(tmp_path):
    """HF dataset layout: images/<basename of image_src>; fallback <image_id>.jpg."""
    template = json.loads(shared_file(*TEMPLATE).read_text())[:2]
    (tmp_path / "t.json").write_text(json.dumps(template))
    imgs = tmp_path / "images"
    imgs.mkdir()
    (imgs / "7206072054_c53d53b97d_o.jpg").write_bytes(b"x")  # item 0's image_src basename
    (imgs / f"{template[1]['image_id']}.jpg").write_bytes(b"x")
    its = mmhal.items(tmp_path / "t.json", imgs)
    assert Path(its[0]["image"]).name == "7206072054_c53d53b97d_o.jpg"
    assert Path(its[1]["image"]).name == f"{template[1]['image_id']}.jpg"


def test_items_missing_images_say_where_to_get_them(tmp_path):
    template = shared_file(*TEMPLATE)
    with pytest.raises(FileNotFoundError) as e:
        mmhal.items(template, tmp_path)
    msg = str(e.value)
    assert "Shengcao1006/MMHal-Bench" in msg and "7206072054_c53d53b97d_o.jpg" in msg and "96 in all" in msg


def test_image_names_cannot_escape(tmp_path):
    rec = {"image_src": "https://x/../../etc/passwd", "image_id": "../../secret"}
    assert mmhal.image_filename_candidates(rec) == ["passwd"]
    rec = {"image_src": "https://x/a/..", "image_id": "ok_id"}
    assert mmhal.image_filename_candidates(rec) == ["ok_id.jpg", "ok_id.png", "ok_id.jpeg"]


def test_load_template_validates(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps([{"question": "q"}]))
    with pytest.raises(ValueError, match="lacks field"):
        mmhal.load_template(p)
    p.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ValueError, match="JSON list"):
        mmhal.load_template(p)


def test_score_file_needs_a_judge_and_usable_answers(tmp_path):
    with pytest.raises(ValueError, match="needs a judge"):
        mmhal.score_file(tmp_path / "a.jsonl", MINI / "mmhal-bench_answer_template.json", tmp_path / "m.json", None)

    class Unused:
        label = "unused"

        def complete_many(self, prompts):  # never reached: every line is rejected before judging
            raise AssertionError

    a = tmp_path / "a.jsonl"
    a.write_text(json.dumps({"id": "0", "response": "x"}) + "\n" + json.dumps({"id": 1, "response": 5}) + "\n")
    with pytest.raises(ValueError, match="no usable answers"):
        mmhal.score_file(a, MINI / "mmhal-bench_answer_template.json", tmp_path / "m.json", Unused())


# ---------------------------------------------------------------------------------------------- generation error rows


class _RatingServer:
    """A real chat-completions endpoint on 127.0.0.1 that records every prompt it is sent.

    It replies "Rating: <n % 7>" for a response "answer number <n>" (the response is the last slot
    of the official template), so the expected ratings are known without running the scorer.
    """

    def __init__(self):
        import re
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.prompts: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                content = body["messages"][-1]["content"]
                server.prompts.append(content)
                resp = content.split("### LMM Response to Evaluate\n", 1)[1]
                m = re.search(r"answer number (\d+)", resp)
                text = f"Explanation. Rating: {int(m.group(1)) % 7}" if m else "no rating"
                payload = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                                   "finish_reason": "stop"}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def judge(self):
        from lpoi.eval.judge import OpenAIJudge

        url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        return OpenAIJudge(url, "judge-model", api_key_env=None, max_retries=0, timeout=10.0)  # no cache

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


MINI_TEMPLATE = MINI / "mmhal-bench_answer_template.json"


def _error_row(i: int, reason: str) -> dict:
    """What lpoi.eval.generate writes for an item whose image could not be loaded."""
    return {"id": i, "question": "q", "response": "", "error": reason, "error_detail": f"item {i}: {reason}",
            "question_type": mmhal.QUESTION_TYPES[i]}


def test_generation_error_rows_are_not_judged_and_not_scored(tmp_path):
    """Mini ids 0..7 except 4 answered "answer number i" -> ratings 0, 1, 2, 3, 5, 6, 0 (i % 7), plus an
    error row for id 4 (relation).

    By hand: score = 17/7; hallucination (< 3): 0, 1, 2, 0 -> 4/7; per_type has no "relation".
    Scored as an answer, the error row would be judged (an 8th prompt) and rated, so equal metrics and
    7 prompts on each run mean it was left out.
    """
    normal = [{"id": i, "response": f"answer number {i}"} for i in range(8) if i != 4]
    clean_path, err_path = tmp_path / "clean.jsonl", tmp_path / "errors.jsonl"
    clean_path.write_text("".join(json.dumps(r) + "\n" for r in normal))
    err_path.write_text("".join(json.dumps(r) + "\n" for r in normal[:4] + [_error_row(4, "missing")] + normal[4:]))
    template = mmhal.load_template(MINI_TEMPLATE)
    with _RatingServer() as server:
        clean = mmhal.score_file(clean_path, MINI_TEMPLATE, tmp_path / "clean.json", server.judge(),
                                 details_path=tmp_path / "d1.jsonl")
        clean_prompts = list(server.prompts)
        server.prompts.clear()
        m = mmhal.score_file(err_path, MINI_TEMPLATE, tmp_path / "m.json", server.judge(),
                             details_path=tmp_path / "d2.jsonl", max_error_ratio=1 / 8)  # 1 of 8: accepted
        err_prompts = list(server.prompts)
    assert len(clean_prompts) == 7 and sorted(err_prompts) == sorted(clean_prompts)
    assert mmhal.build_prompt(template[4], "") not in err_prompts
    assert not any(template[4]["question"] in p for p in err_prompts)  # nothing about item 4 was sent
    assert json.loads((tmp_path / "m.json").read_text()) == m
    assert m["n_generation_errors"] == 1 and m["generation_errors"] == {"missing": 1}
    assert clean["n_generation_errors"] == 0 and clean["generation_errors"] == {}
    keys = set(m) - {"n_generation_errors", "generation_errors"}
    assert {k: m[k] for k in keys} == {k: clean[k] for k in keys}
    assert (tmp_path / "d2.jsonl").read_text() == (tmp_path / "d1.jsonl").read_text()
    assert m["n"] == 7 and m["n_answers"] == 7 and m["n_rejected"] == 0
    assert m["score"] == pytest.approx(17 / 7) and m["hallucination_rate"] == pytest.approx(4 / 7)
    assert "relation" not in m["per_type"]


def test_all_generation_error_rows_is_an_error_and_nothing_is_judged(tmp_path):
    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in
                               [_error_row(0, "missing"), _error_row(1, "too_small"), _error_row(2, "missing")]))
    with _RatingServer() as server:
        with pytest.raises(ValueError, match=r"answers\.jsonl: all 3 answer rows are generation errors") as e:
            mmhal.score_file(answers, MINI_TEMPLATE, tmp_path / "m.json", server.judge())
        assert server.prompts == []
    assert "'missing': 2" in str(e.value) and "'too_small': 1" in str(e.value)
    assert not (tmp_path / "m.json").exists()


# ---------------------------------------------------------------------------------------------- the stage's judge cache


def _score_stage(server, answers, out, *extra):
    import os
    import subprocess
    import sys

    url = f"http://127.0.0.1:{server.httpd.server_address[1]}/v1"
    env = {**os.environ, "OPENAI_API_KEY": "sk-test-key"}  # params.yaml's judge.api_key_env; the server ignores it
    r = subprocess.run([sys.executable, "stages/score.py", "mmhal", "--answers", str(answers), "--out", str(out),
                        "--template", str(MINI_TEMPLATE), "--judge-base-url", url, "--judge-model", "judge-model",
                        *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(out.read_text())


@pytest.mark.parametrize("work", [False, True])
def test_score_stage_twice_sends_no_request_the_second_time(tmp_path, work):
    """stages/score.py mmhal keeps the judge's replies on disk by default (in --work, else beside --out):
    the second run sends no request and gives the same metrics, dated by the first run's requests."""
    from datetime import datetime, timezone

    answers = tmp_path / "answers.jsonl"
    answers.write_text("".join(json.dumps({"id": i, "response": f"answer number {i}"}) + "\n" for i in range(8)))
    extra = ["--work", str(tmp_path / "work")] if work else []
    out = tmp_path / "mmhal.json"
    with _RatingServer() as server:
        first = _score_stage(server, answers, out, *extra)
        assert len(server.prompts) == 8
        second = _score_stage(server, answers, out, *extra)
        assert len(server.prompts) == 8  # nothing sent the second time
        third = _score_stage(server, answers, tmp_path / "again.json", *extra, "--no-judge-cache") if work else None
    cache = tmp_path / "work" / "judge_cache" if work else tmp_path / "mmhal.judge_cache"
    assert (cache / "judge.json").is_file() and len(list(cache.glob("*/*.json"))) == 8
    today = datetime.now(timezone.utc).date().isoformat()
    assert first == second and first["judge_date"] == today
    assert first["score"] == pytest.approx(sum(i % 7 for i in range(8)) / 8)
    assert "judge-model" in first["judge"] and "sk-test-key" not in out.read_text()
    if work:
        assert third["score"] == first["score"] and len(server.prompts) == 16  # --no-judge-cache asks again
