"""AlpacaEval-style win rate: verdict parsing, position-bias control, missing verdicts, resume, judges.

The records are our own, in AlpacaEval's format (dataset, instruction, output, generator); the
real reference outputs are CC BY-NC and are not copied here.
"""

from __future__ import annotations

import http.server
import json
import math
import threading

import pytest

from cft_utils.evaluation import judge as AE
from cft_utils.io import read_json, read_jsonl

INSTRUCTIONS = [
    "Name the capital of France.",
    "List three primary colours.",
    "What is two plus two?",
    "Translate 'chat' from French to English.",
]
GOLD = {
    INSTRUCTIONS[0]: "The capital of France is Paris.",
    INSTRUCTIONS[1]: "Red, yellow and blue.",
    INSTRUCTIONS[2]: "Two plus two is four.",
    INSTRUCTIONS[3]: "cat",
}
REFERENCE = [
    {
        "dataset": "selfinstruct",
        "instruction": INSTRUCTIONS[0],
        "output": "It is Lyon.",
        "generator": "text_davinci_003",
    },
    {
        "dataset": "selfinstruct",
        "instruction": INSTRUCTIONS[1],
        "output": "Green.",
        "generator": "text_davinci_003",
    },
    {
        "dataset": "oasst",
        "instruction": INSTRUCTIONS[2],
        "output": "Two plus two is four.",
        "generator": "text_davinci_003",
    },
    {"dataset": "koala", "instruction": INSTRUCTIONS[3], "output": "cat", "generator": "text_davinci_003"},
]
MODEL = [
    {"instruction": INSTRUCTIONS[0], "output": "The capital of France is Paris.", "generator": "tiny"},  # win
    {"instruction": INSTRUCTIONS[1], "output": "Red, yellow and blue.", "generator": "tiny"},  # win
    {"instruction": INSTRUCTIONS[2], "output": "Five.", "generator": "tiny"},  # loss
    {"instruction": INSTRUCTIONS[3], "output": "cat", "generator": "tiny"},  # tie
]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "A"),
        ("B.", "B"),
        (" (B)", "B"),
        ("Response A", "A"),
        ("Output: B", "B"),
        ("The better response is A.", "A"),
        ("B\nBecause it is correct.", "B"),
        ("Tie", "tie"),
        ("A good answer would mention Paris.", None),
        ("a", None),
        ("", None),
        (None, None),
        ("I cannot decide.", None),
        ("AB", None),
    ],
)
def test_parse_verdict(text, expected):
    assert AE.parse_verdict(text) == expected


def test_reference_match_win_rate_hand_computed(tmp_path):
    out = tmp_path / "ae.jsonl"
    res = AE.evaluate_win_rate(MODEL, REFERENCE, AE.ReferenceMatchJudge(GOLD), out)
    # scores 1, 1, 0, 0.5 -> mean 0.625; sample var 0.6875/3; stderr sqrt(var/4)
    assert res.win_rate == pytest.approx(0.625)
    assert res.stderr == pytest.approx(math.sqrt(0.6875 / 3 / 4))
    assert (res.n, res.n_missing, res.wins, res.ties, res.losses) == (4, 0, 2, 1, 1)
    recs = read_jsonl(out)
    assert [r["score"] for r in recs] == [1.0, 1.0, 0.0, 0.5]
    r0 = recs[0]
    assert r0["reference_output"] == "It is Lyon." and r0["reference_generator"] == "text_davinci_003"
    assert [j["order"] for j in r0["judgements"]] == ["model_first", "reference_first"]
    assert [j["winner"] for j in r0["judgements"]] == ["A", "B"]  # the model wins in both positions
    assert r0["judgements"][0]["raw"].startswith("f1(A)=1.000000")
    summary = read_json(tmp_path / "ae.summary.json")
    assert summary["win_rate"] == pytest.approx(0.625) and summary["n"] == 4


class ScriptedJudge:
    """Returns canned raw answers; counts calls; can fail after a number of calls."""

    def __init__(self, answer="A", fail_after=None, name="scripted"):
        self.answer, self.fail_after, self.name, self.calls = answer, fail_after, name, 0

    def judge(self, instruction, output_a, output_b):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        raw = self.answer(instruction, output_a, output_b) if callable(self.answer) else self.answer
        prompt = AE.render_judge_prompt(instruction, output_a, output_b)
        return AE.Verdict(AE.parse_verdict(raw), raw, prompt)


def test_both_orders_cancel_position_bias(tmp_path):
    res = AE.evaluate_win_rate(MODEL, REFERENCE, ScriptedJudge("A"), tmp_path / "a.jsonl")
    assert res.win_rate == 0.5 and res.n == 4  # always-"A" judge: 1 then 0 for every instruction
    rec = read_jsonl(tmp_path / "a.jsonl")[0]
    assert [j["model_score"] for j in rec["judgements"]] == [1.0, 0.0]
    assert "## Response A\nThe capital of France is Paris." in rec["judgements"][0]["prompt"]
    assert "## Response A\nIt is Lyon." in rec["judgements"][1]["prompt"]


def test_random_order_is_seeded(tmp_path):
    runs = [
        AE.evaluate_win_rate(
            MODEL, REFERENCE, ScriptedJudge("A"), tmp_path / f"r{i}.jsonl", orders="random", seed=7
        )
        for i in range(2)
    ]
    recs = [read_jsonl(tmp_path / f"r{i}.jsonl") for i in range(2)]
    assert [r["judgements"][0]["order"] for r in recs[0]] == [r["judgements"][0]["order"] for r in recs[1]]
    assert all(len(r["judgements"]) == 1 for r in recs[0])
    assert runs[0].win_rate == runs[1].win_rate
    with pytest.raises(ValueError, match="orders"):
        AE.evaluate_win_rate(MODEL, REFERENCE, ScriptedJudge("A"), tmp_path / "x.jsonl", orders="sometimes")


def test_unparseable_verdict_is_missing_not_a_loss(tmp_path):
    def answer(instruction, a, b):
        if instruction == INSTRUCTIONS[0]:
            return "I refuse to choose."  # both orders unparseable -> instruction missing
        if instruction == INSTRUCTIONS[1]:
            return "A" if a.startswith("Red") else "hmm"  # only the model-first order parses
        return "B" if b == "Five." or b == "cat" else "A"

    res = AE.evaluate_win_rate(MODEL, REFERENCE, ScriptedJudge(answer), tmp_path / "m.jsonl")
    recs = {r["instruction"]: r for r in read_jsonl(tmp_path / "m.jsonl")}
    assert recs[INSTRUCTIONS[0]]["score"] is None
    assert [j["winner"] for j in recs[INSTRUCTIONS[0]]["judgements"]] == [None, None]
    assert recs[INSTRUCTIONS[1]]["score"] == 1.0
    assert (res.n, res.n_missing) == (3, 1)

    res_none = AE.evaluate_win_rate(
        MODEL, REFERENCE, ScriptedJudge("no idea", name="x"), tmp_path / "n.jsonl"
    )
    assert math.isnan(res_none.win_rate) and res_none.n == 0 and res_none.n_missing == 4
    assert read_json(tmp_path / "n.summary.json")["win_rate"] is None


def test_interrupted_judging_resumes(tmp_path):
    out = tmp_path / "resume.jsonl"
    with pytest.raises(KeyboardInterrupt):
        AE.evaluate_win_rate(MODEL, REFERENCE, ScriptedJudge("A", fail_after=5), out)
    assert len(read_jsonl(out)) == 2  # two instructions (4 calls) finished and were checkpointed
    judge = ScriptedJudge("A")
    res = AE.evaluate_win_rate(MODEL, REFERENCE, judge, out)
    assert judge.calls == 4 and res.n == 4  # only the last two instructions were judged again
    judge2 = ScriptedJudge("A")
    changed = [dict(m) for m in MODEL]
    changed[0]["output"] = "Paris."
    AE.evaluate_win_rate(changed, REFERENCE, judge2, out)
    assert judge2.calls == 2  # a changed output is judged again, the rest comes from the cache


def test_bad_inputs_are_named(tmp_path):
    bad = tmp_path / "model_outputs.json"
    bad.write_text(json.dumps([{"instruction": "x"}]))
    with pytest.raises(KeyError, match=r"model_outputs.json: record 0 lacks \['output'\]"):
        AE.load_outputs(bad)
    with pytest.raises(ValueError, match="share id"):
        AE.load_outputs([REFERENCE[0], REFERENCE[0]])
    with pytest.raises(KeyError, match="no reference output"):
        AE.evaluate_win_rate(
            [{"instruction": "unknown", "output": "y"}], REFERENCE, ScriptedJudge(), tmp_path / "e.jsonl"
        )
    with pytest.raises(KeyError, match="no gold answer"):
        AE.ReferenceMatchJudge({}).judge("q", "a", "b")


def test_alpaca_eval_file_format_roundtrip(tmp_path):
    # AlpacaEval's own serialisation: a JSON array, pandas style.
    p = tmp_path / "reference.json"
    p.write_text(json.dumps(REFERENCE, separators=(",", ":"), indent=2))
    recs = AE.load_outputs(p)
    assert recs[0]["id"] == AE.instruction_id(INSTRUCTIONS[0]) and recs[0]["generator"] == "text_davinci_003"


# --------------------------------------------------------------------------- OpenAI-compatible judge


class _StubHandler(http.server.BaseHTTPRequestHandler):
    seen: list = []
    fail_first: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if self.fail_first:
            code = self.fail_first.pop(0)
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b'{"error": "try again"}')
            return
        prompt = body["messages"][-1]["content"]
        answer = "A" if "## Response A\nThe capital of France is Paris." in prompt else "B"
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *a):
        pass


@pytest.fixture
def stub_server():
    _StubHandler.seen, _StubHandler.fail_first = [], []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _StubHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", _StubHandler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_openai_compatible_judge_against_local_stub(stub_server, tmp_path, monkeypatch):
    url, handler = stub_server
    monkeypatch.setenv("CFT_JUDGE_MODEL", "judge-model")
    monkeypatch.setenv("CFT_JUDGE_BASE_URL", url)
    monkeypatch.setenv("CFT_JUDGE_API_KEY", "sk-secret-test-key")
    judge = AE.judge_from_env(timeout=5, max_retries=2)
    handler.fail_first = [500]  # one transient error, retried
    out = tmp_path / "api.jsonl"
    res = AE.evaluate_win_rate(MODEL[:2], REFERENCE, judge, out)
    assert res.n == 2
    # Instruction 0: stub says A when the model is first, B when it is second -> model wins twice.
    recs = read_jsonl(out)
    assert recs[0]["score"] == 1.0 and recs[0]["judge"] == "openai-compatible:judge-model"
    assert len(handler.seen) == 5  # 2 instructions x 2 orders + 1 retried failure
    assert all(s["path"] == "/v1/chat/completions" for s in handler.seen)
    assert all(s["auth"] == "Bearer sk-secret-test-key" for s in handler.seen)
    assert (
        handler.seen[-1]["body"]["model"] == "judge-model" and handler.seen[-1]["body"]["temperature"] == 0.0
    )
    for f in (out, tmp_path / "api.summary.json"):
        assert "sk-secret-test-key" not in f.read_text()
    assert "sk-secret" not in repr(judge)


def test_openai_judge_errors(stub_server, monkeypatch):
    url, handler = stub_server
    for v in AE.JUDGE_ENV.values():
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(ValueError, match="CFT_JUDGE_MODEL, CFT_JUDGE_BASE_URL"):
        AE.OpenAICompatibleJudge()
    judge = AE.OpenAICompatibleJudge("m", url, "k", timeout=5, max_retries=3)
    handler.fail_first = [401]
    with pytest.raises(RuntimeError, match="HTTP 401"):  # not retried
        judge.judge("q", "a", "b")
    assert len(handler.seen) == 1
    dead = AE.OpenAICompatibleJudge("m", "http://127.0.0.1:9/v1", "k", timeout=1, max_retries=1)
    with pytest.raises(RuntimeError, match="unreachable"):
        dead.judge("q", "a", "b")


# --------------------------------------------------------------------------- local transformers judge


def test_transformers_judge_logprobs_match_a_manual_forward(tiny_model_dir, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    d = tiny_model_dir()
    model, tok = AutoModelForCausalLM.from_pretrained(d), AutoTokenizer.from_pretrained(d)
    judge = AE.TransformersJudge(model, tok)
    v = judge.judge("q?", "first", "second")
    lp_a, lp_b = judge.continuation_logprobs(judge._prompt_text(v.prompt), ["A", "B"])
    ctx = tok(judge._prompt_text(v.prompt), add_special_tokens=False)["input_ids"]
    for letter, lp in (("A", lp_a), ("B", lp_b)):
        cont = tok(letter, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(torch.tensor([ctx + cont])).logits[0]
        manual = sum(torch.log_softmax(logits[len(ctx) - 1 + i], -1)[t].item() for i, t in enumerate(cont))
        assert lp == pytest.approx(manual, abs=1e-4)
    assert v.winner == ("A" if lp_a > lp_b else "B")
    assert v.raw == f"logp(A)={lp_a:.6f} logp(B)={lp_b:.6f}"
    res = AE.evaluate_win_rate(MODEL[:2], REFERENCE, judge, tmp_path / "tj.jsonl")
    assert res.n == 2 and 0.0 <= res.win_rate <= 1.0


def test_checkpoints_are_periodic_and_an_interruption_keeps_every_judged_record(tmp_path, monkeypatch):
    out = tmp_path / "periodic.jsonl"
    seen = []

    def progress(done, total):
        seen.append(len(read_jsonl(out)) if out.exists() else 0)

    monkeypatch.setattr(AE, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every record
    AE.evaluate_win_rate(MODEL, REFERENCE, ScriptedJudge("A"), out, progress=progress)
    assert seen == [1, 2, 3, 4]
    out.unlink()
    seen.clear()
    monkeypatch.setattr(AE, "CHECKPOINT_SECONDS", 3600.0)  # none within the run: the file appears at the end only
    with pytest.raises(KeyboardInterrupt):
        AE.evaluate_win_rate(MODEL, REFERENCE, ScriptedJudge("A", fail_after=5), out, progress=progress)
    assert seen == [0, 0]  # nothing rewritten while judging ...
    assert len(read_jsonl(out)) == 2  # ... yet both finished instructions were kept when it was interrupted
