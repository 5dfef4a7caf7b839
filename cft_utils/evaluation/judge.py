"""AlpacaEval-style win rate of model outputs against reference outputs, with a pluggable judge.

The paper compares each model output with the text-davinci-003 output for the same AlpacaEval
instruction (805 in the full set) and lets GPT-4 pick the better one. Here:

* A :class:`Judge` returns a :class:`Verdict` for ``(instruction, output_a, output_b)``: winner
  ``"A"``, ``"B"``, ``"tie"`` or ``None`` (the judge's answer could not be parsed: *missing*, never
  counted as a loss), plus the raw judge text and the prompt sent.
* Judges: :class:`OpenAICompatibleJudge` (any ``/chat/completions`` endpoint through the ``openai``
  client with ``base_url``; model, base URL and key from ``CFT_JUDGE_MODEL``, ``CFT_JUDGE_BASE_URL``,
  ``CFT_JUDGE_API_KEY``; the key is only ever put in the ``Authorization`` header), :class:`TransformersJudge`
  (a local causal LM:
  compares the log-probabilities of answering ``A`` and ``B``), :class:`ReferenceMatchJudge`
  (offline and deterministic, for the sandbox: the output with the higher token F1 against a gold
  answer for the instruction wins).
* Position bias: by default every pair is judged in both orders (model first, reference first) and
  the two scores are averaged; ``orders="random"`` judges one order chosen per instruction from a
  seeded hash.
* Per instruction the model scores 1 (win), 0.5 (tie) or 0 (loss), averaged over the parseable
  orders. Win rate = mean over instructions with a score; stderr = sample std / sqrt(n).
* Everything is kept in a JSONL (one record per instruction id: instruction, reference output,
  model output, per order the judge prompt, raw verdict, parsed winner), rewritten atomically after
  every judged instruction, so an interrupted run resumes where it stopped. A cached record is
  reused only when the judge name and both outputs are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from ..config import ExperimentConfig
from ..io import read_jsonl, write_json, write_jsonl
from ..models import fit_messages, load_model, load_tokenizer
from .metrics import token_f1

JUDGE_ENV = {"model": "CFT_JUDGE_MODEL", "base_url": "CFT_JUDGE_BASE_URL", "api_key": "CFT_JUDGE_API_KEY"}
CHECKPOINT_SECONDS = 5.0  # how often a judging run rewrites its JSONL checkpoint (at most)
NO_KEY = "no-key"  # sent to an endpoint that needs none (the openai client refuses to start without a key)

JUDGE_SYSTEM_PROMPT = (
    "You are a careful evaluator of AI assistants. You compare two responses to the same "
    "instruction and decide which one a thoughtful human would prefer."
)
# Our own wording of the usual pairwise format (AlpacaEval-style: the judge names one response).
JUDGE_PROMPT_TEMPLATE = """Compare the two responses to the instruction below. Judge helpfulness, correctness, relevance and level of detail; ignore the order in which the responses appear and their length as such.

## Instruction
{instruction}

## Response A
{output_a}

## Response B
{output_b}

Which response is better? Answer with a single letter: A or B."""

# "A", "(B)", "Response A.", "Output: B", "Tie" -- a bare letter must not be the article "A good...".
_VERDICT_RE = re.compile(
    r"^\W*(?:(?i:(?:the\s+)?(?:better\s+)?(?:response|output|answer)(?:\s+is)?)\s*[:\-]?\s*)?"
    r"\(?\s*([AB])\s*\)?(?=\s*(?:$|[.,:;)!\n]))"
)
_TIE_RE = re.compile(r"^\W*(?i:tie|draw|equal|both\s+(?:are\s+)?equal)\b")


def render_judge_prompt(instruction: str, output_a: str, output_b: str) -> str:
    """The pairwise judge prompt for one comparison."""
    return JUDGE_PROMPT_TEMPLATE.format(instruction=instruction, output_a=output_a, output_b=output_b)


def parse_verdict(text: str | None) -> str | None:
    """``"A"``/``"B"``/``"tie"`` from a judge's answer, or ``None`` when it cannot be parsed."""
    if not text or not text.strip():
        return None
    m = _VERDICT_RE.match(text.strip())
    if m:
        return m.group(1)
    if _TIE_RE.match(text.strip()):
        return "tie"
    return None


@dataclass
class Verdict:
    """One judgement: ``winner`` in {"A", "B", "tie", None (unparseable: missing)}, raw text, prompt."""

    winner: str | None
    raw: str
    prompt: str | None = None

    def __post_init__(self):
        if self.winner not in {"A", "B", "tie", None}:
            raise ValueError(f"Verdict.winner must be 'A', 'B', 'tie' or None, got {self.winner!r}")


@runtime_checkable
class Judge(Protocol):
    """Anything with a ``name`` and ``judge(instruction, output_a, output_b) -> Verdict``."""

    name: str

    def judge(self, instruction: str, output_a: str, output_b: str) -> Verdict:
        """Which of the two outputs answers ``instruction`` better."""
        ...


# --------------------------------------------------------------------------- judges


class ReferenceMatchJudge:
    """Offline judge: the output with the higher token F1 against the gold answer wins (ties within ``tol``).

    ``gold`` maps an instruction to its gold answer; token F1 is
    :func:`cft_utils.evaluation.metrics.token_f1` (Unicode-aware, no English-specific normalisation). An
    instruction without a gold answer raises ``KeyError``.
    """

    def __init__(self, gold: Mapping[str, str], tol: float = 1e-9, name: str = "reference-match-f1"):
        self.gold = dict(gold)
        self.tol = tol
        self.name = name

    def judge(self, instruction: str, output_a: str, output_b: str) -> Verdict:
        """Score both outputs against the gold answer of ``instruction``."""
        if instruction not in self.gold:
            raise KeyError(f"ReferenceMatchJudge has no gold answer for instruction {instruction[:80]!r}")
        gold = self.gold[instruction]
        fa, fb = token_f1(output_a, gold), token_f1(output_b, gold)
        winner = "tie" if abs(fa - fb) <= self.tol else ("A" if fa > fb else "B")
        return Verdict(winner, f"f1(A)={fa:.6f} f1(B)={fb:.6f}", prompt=None)


class OpenAICompatibleJudge:
    """Judge through an OpenAI-compatible ``/chat/completions`` endpoint (the ``openai`` client with ``base_url``).

    Model, base URL (e.g. ``https://api.openai.com/v1``) and key default to the environment
    variables in :data:`JUDGE_ENV` (never ``OPENAI_*``). The key is sent only in the ``Authorization``
    header; it is not part of ``repr``, of verdicts or of error messages. An endpoint without a key (a local
    vLLM server) gets the placeholder :data:`NO_KEY`. Transient failures (HTTP 408/409/429/5xx, network
    errors) are retried ``max_retries`` times by the client (exponential backoff), then raised as
    ``RuntimeError``; other HTTP errors are raised at once.
    """

    def __init__(
        self,
        model: str | None = None,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        temperature: float = 0.0,
        max_tokens: int = 8,
        timeout: float = 60.0,
        max_retries: int = 4,
        system_prompt: str = JUDGE_SYSTEM_PROMPT,
    ):
        import openai

        self.model = model or os.environ.get(JUDGE_ENV["model"])
        self.base_url = (base_url or os.environ.get(JUDGE_ENV["base_url"]) or "").rstrip("/")
        api_key = api_key if api_key is not None else os.environ.get(JUDGE_ENV["api_key"])
        missing = [JUDGE_ENV[k] for k, v in (("model", self.model), ("base_url", self.base_url)) if not v]
        if missing:
            raise ValueError(f"OpenAICompatibleJudge needs a model and base URL: set {', '.join(missing)}")
        self.temperature, self.max_tokens, self.system_prompt = temperature, max_tokens, system_prompt
        self.__client = openai.OpenAI(base_url=self.base_url, api_key=api_key or NO_KEY, timeout=timeout,
                                      max_retries=max_retries)
        self.name = f"openai-compatible:{self.model}"

    def __repr__(self) -> str:
        return f"OpenAICompatibleJudge(model={self.model!r}, base_url={self.base_url!r})"

    def complete(self, messages: list[dict]) -> str:
        """The endpoint's answer to ``messages`` (empty when it sends no text); ``RuntimeError`` naming the URL
        (never the key) when it refuses or cannot be reached."""
        import openai

        try:
            resp = self.__client.chat.completions.create(model=self.model, messages=messages,
                                                         temperature=self.temperature, max_tokens=self.max_tokens)
        except openai.APIStatusError as e:
            raise RuntimeError(f"judge endpoint {self.base_url} answered HTTP {e.status_code}: "
                               f"{str(e.message)[:300]}") from None
        except openai.APIConnectionError as e:
            raise RuntimeError(f"judge endpoint {self.base_url} unreachable: {type(e).__name__}") from None
        choices = getattr(resp, "choices", None) or []
        message = getattr(choices[0], "message", None) if choices else None
        return (getattr(message, "content", None) or "") if message is not None else ""

    def judge(self, instruction: str, output_a: str, output_b: str) -> Verdict:
        """Ask the endpoint which response is better; parse its answer."""
        prompt = render_judge_prompt(instruction, output_a, output_b)
        raw = self.complete([{"role": "system", "content": self.system_prompt}, {"role": "user", "content": prompt}])
        return Verdict(parse_verdict(raw), raw, prompt)


class TransformersJudge:
    """Local causal-LM judge: compares log P("A") and log P("B") after the pairwise prompt.

    The prompt goes through the tokenizer's chat template (with the generation prompt) when it has
    one, else it is used as is followed by ``"\\nAnswer: "``. ``margin``: a log-prob difference at
    most this large is a tie.
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        margin: float = 0.0,
        name: str | None = None,
        system_prompt: str = JUDGE_SYSTEM_PROMPT,
    ):
        if isinstance(model, (str, os.PathLike)):
            model = load_model(model)
        if isinstance(tokenizer, (str, os.PathLike)):
            tokenizer = load_tokenizer(tokenizer)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.margin, self.system_prompt = margin, system_prompt
        self.name = (
            name or f"transformers:{getattr(model.config, '_name_or_path', '') or type(model).__name__}"
        )

    def _prompt_text(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [
                {"role": "system", "content": self.system_prompt},
                {"role": "user", "content": prompt},
            ]
            # templates without a system role (Mistral-Instruct v0.1): the system prompt joins the user turn
            return self.tokenizer.apply_chat_template(
                fit_messages(self.tokenizer, messages), tokenize=False, add_generation_prompt=True
            )
        return prompt + "\nAnswer: "

    def continuation_logprobs(self, context: str, continuations: Sequence[str]) -> list[float]:
        """Sum of token log-probs of each continuation after ``context`` (one batch, right-padded)."""
        import torch

        ctx = self.tokenizer(context, add_special_tokens=False)["input_ids"]
        conts = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in continuations]
        if any(len(c) == 0 for c in conts):
            raise ValueError(f"a continuation tokenises to nothing: {continuations}")
        seqs = [ctx + c for c in conts]
        width = max(len(s) for s in seqs)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
        device = next(self.model.parameters()).device
        with torch.no_grad():
            logits = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        out = []
        for i, c in enumerate(conts):
            start = len(ctx)
            positions = torch.arange(start - 1, start - 1 + len(c), device=logp.device)
            out.append(float(logp[i, positions, torch.tensor(c, device=logp.device)].sum()))
        return out

    def judge(self, instruction: str, output_a: str, output_b: str) -> Verdict:
        """Verdict from the log-prob comparison; raw text records both log-probs."""
        prompt = render_judge_prompt(instruction, output_a, output_b)
        lp_a, lp_b = self.continuation_logprobs(self._prompt_text(prompt), ["A", "B"])
        if not (math.isfinite(lp_a) and math.isfinite(lp_b)):
            return Verdict(None, f"logp(A)={lp_a} logp(B)={lp_b}", prompt)
        diff = lp_a - lp_b
        winner = "tie" if abs(diff) <= self.margin else ("A" if diff > 0 else "B")
        return Verdict(winner, f"logp(A)={lp_a:.6f} logp(B)={lp_b:.6f}", prompt)


def judge_from_env(**kw) -> OpenAICompatibleJudge:
    """An :class:`OpenAICompatibleJudge` configured from ``CFT_JUDGE_*`` environment variables."""
    return OpenAICompatibleJudge(**kw)


def judge_label(cfg: ExperimentConfig) -> str:
    """The name of the profile's judge (``evaluation.judge``) as it enters a cached result's settings."""
    ev = cfg.evaluation
    if ev.judge == "openai":
        return f"openai-compatible:{os.environ.get(JUDGE_ENV['model'], '?')}"
    if ev.judge == "transformers":
        return f"transformers:{ev.judge_model}"
    return "reference-match-f1"


def make_judge(cfg: ExperimentConfig, docs: list[dict]) -> Judge:
    """The profile's AlpacaEval judge; the offline reference judge takes the gold answers from ``docs``."""
    ev = cfg.evaluation
    if ev.judge == "openai":
        return OpenAICompatibleJudge()
    if ev.judge == "transformers":
        if not ev.judge_model:
            raise ValueError(f"{cfg.source_file}: evaluation.judge 'transformers' needs evaluation.judge_model")
        return TransformersJudge(ev.judge_model, ev.judge_model)
    missing = [d.get("id", i) for i, d in enumerate(docs) if "gold" not in d]
    if missing:
        raise ValueError(f"evaluation.judge 'reference' needs a 'gold' answer in every AlpacaEval document; "
                         f"missing in {missing[:5]}")
    return ReferenceMatchJudge({d["instruction"]: d["gold"] for d in docs})


# --------------------------------------------------------------------------- data


def instruction_id(instruction: str) -> str:
    """Stable id of an instruction (AlpacaEval records have none): ``ae-`` + 12 hex of its SHA-256."""
    return "ae-" + hashlib.sha256(instruction.encode("utf-8")).hexdigest()[:12]


def load_outputs(source: str | os.PathLike | Iterable[Mapping], what: str = "outputs") -> list[dict]:
    """Read AlpacaEval-format records (JSON array or JSONL, or records) and check ``instruction``/``output``."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        text = path.read_text(encoding="utf-8")
        records = json.loads(text) if text.lstrip().startswith("[") else read_jsonl(path)
        where = str(path)
    else:
        records, where = list(source), what
    out, seen = [], {}
    for i, r in enumerate(records):
        if not isinstance(r, Mapping):
            raise ValueError(f"{where}: record {i} is not an object")
        missing = {"instruction", "output"} - set(r)
        if missing:
            raise KeyError(f"{where}: record {i} lacks {sorted(missing)}")
        if not isinstance(r["instruction"], str) or not isinstance(r["output"], str):
            raise ValueError(f"{where}: record {i}: 'instruction' and 'output' must be strings")
        rec = dict(r)
        rec.setdefault("id", instruction_id(r["instruction"]))
        if rec["id"] in seen:
            raise ValueError(
                f"{where}: records {seen[rec['id']]} and {i} share id {rec['id']} (duplicate instruction?)"
            )
        seen[rec["id"]] = i
        out.append(rec)
    return out


# --------------------------------------------------------------------------- evaluation

ORDERS = ("model_first", "reference_first")


def _model_score(order: str, winner: str | None) -> float | None:
    if winner is None:
        return None
    if winner == "tie":
        return 0.5
    model_letter = "A" if order == "model_first" else "B"
    return 1.0 if winner == model_letter else 0.0


def _orders_for(item_id: str, orders: str, seed: int) -> tuple[str, ...]:
    if orders == "both":
        return ORDERS
    if orders == "random":
        h = hashlib.sha256(f"{seed}:{item_id}".encode()).digest()[0]
        return (ORDERS[h % 2],)
    raise ValueError(f"orders must be 'both' or 'random', got {orders!r}")


def _digest(*texts: str) -> str:
    return hashlib.sha256("\x00".join(texts).encode("utf-8")).hexdigest()[:16]


@dataclass
class WinRate:
    """Summary: win rate (ties 0.5) with stderr over ``n`` judged instructions; NaN when n == 0."""

    win_rate: float
    stderr: float
    n: int
    n_missing: int
    wins: int
    ties: int
    losses: int
    judge: str
    orders: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict; NaN (undefined) becomes ``None`` so JSON shows it as missing."""
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(self).items()}


def summarize(records: Sequence[Mapping], judge_name: str = "", orders: str = "both") -> WinRate:
    """Win rate, stderr (sample std / sqrt(n)), n, missing, wins/ties/losses from judged records."""
    scores = [r["score"] for r in records if r.get("score") is not None]
    n = len(scores)
    mean = math.fsum(scores) / n if n else float("nan")
    if n >= 2:
        var = math.fsum((s - mean) ** 2 for s in scores) / (n - 1)
        stderr = math.sqrt(var / n)
    else:
        stderr = float("nan")
    return WinRate(
        win_rate=mean,
        stderr=stderr,
        n=n,
        n_missing=len(records) - n,
        wins=sum(s > 0.5 for s in scores),
        ties=sum(s == 0.5 for s in scores),
        losses=sum(s < 0.5 for s in scores),
        judge=judge_name,
        orders=orders,
    )


def evaluate_win_rate(
    model_outputs: str | os.PathLike | Iterable[Mapping],
    reference_outputs: str | os.PathLike | Iterable[Mapping],
    judge: Judge,
    out_path: str | os.PathLike,
    *,
    orders: str = "both",
    seed: int = 0,
    generator: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> WinRate:
    """Judge every model output against the reference output for its instruction; cache and summarise.

    ``out_path`` (JSONL) keeps one record per instruction and is rewritten atomically after each
    judged instruction; ``<out_path stem>.summary.json`` gets the summary. Instructions are matched
    by text; a model output whose instruction has no reference raises ``KeyError``.
    """
    if not isinstance(judge, Judge):
        raise TypeError(f"judge must have .name and .judge(instruction, a, b); got {type(judge).__name__}")
    _orders_for("x", orders, seed)  # validate early
    model = load_outputs(model_outputs, "model outputs")
    refs = {r["instruction"]: r for r in load_outputs(reference_outputs, "reference outputs")}
    out_path = Path(out_path)
    cached = {r["id"]: r for r in read_jsonl(out_path)} if out_path.exists() else {}

    records: list[dict] = []
    done_ids: set[str] = set()
    last_write = time.monotonic()
    try:
        for k, m in enumerate(model):
            ref = refs.get(m["instruction"])
            if ref is None:
                raise KeyError(
                    f"model output {k} (id {m['id']}): instruction has no reference output: {m['instruction'][:80]!r}"
                )
            item_id = ref["id"]
            if item_id in done_ids:
                raise ValueError(f"model outputs hold instruction {item_id} twice")
            done_ids.add(item_id)
            key = _digest(judge.name, orders, str(seed), m["output"], ref["output"])
            old = cached.get(item_id)
            if old is not None and old.get("cache_key") == key:
                records.append(old)
                continue
            judgements = []
            for order in _orders_for(item_id, orders, seed):
                a, b = (m["output"], ref["output"]) if order == "model_first" else (ref["output"], m["output"])
                v = judge.judge(m["instruction"], a, b)
                judgements.append(
                    {
                        "order": order,
                        "prompt": v.prompt,
                        "raw": v.raw,
                        "winner": v.winner,
                        "model_score": _model_score(order, v.winner),
                    }
                )
            valid = [j["model_score"] for j in judgements if j["model_score"] is not None]
            records.append(
                {
                    "id": item_id,
                    "cache_key": key,
                    "dataset": ref.get("dataset"),
                    "instruction": m["instruction"],
                    "reference_output": ref["output"],
                    "reference_generator": ref.get("generator"),
                    "model_output": m["output"],
                    "generator": generator or m.get("generator"),
                    "judge": judge.name,
                    "judgements": judgements,
                    "score": (math.fsum(valid) / len(valid)) if valid else None,
                }
            )
            # Checkpoint: finished records plus cached ones not yet revisited, so nothing is lost. Each checkpoint
            # rewrites the whole file, so it happens at most every CHECKPOINT_SECONDS (a judge model or API takes
            # seconds per call; the reference judge takes microseconds, and rewriting after each of 400 records was
            # a quarter of a sandbox checkpoint's evaluation time).
            if time.monotonic() - last_write >= CHECKPOINT_SECONDS:
                pending = [r for i, r in cached.items() if i not in done_ids]
                write_jsonl(out_path, records + pending)
                last_write = time.monotonic()
            if progress:
                progress(k + 1, len(model))
    except BaseException:
        # Interrupted or failed: keep every judged record (the periodic checkpoint may be seconds old).
        write_jsonl(out_path, records + [r for i, r in cached.items() if i not in done_ids])
        raise
    write_jsonl(out_path, records)
    summary = summarize(records, judge.name, orders)
    summary.extra = {"seed": seed, "records": str(out_path)}
    write_json(out_path.with_name(out_path.stem + ".summary.json"), summary.to_dict())
    return summary
