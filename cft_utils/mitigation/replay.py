"""Generative replay (GR_k) and English replay (ER_k): English data added to Phase 2 to keep task ability.

The paper (§4.1): the **Phase 1 model** answers, in English, the English counterparts of the Phase 2
instructions; k % of the Phase 2 set's size (GR_5, GR_10) is added to Phase 2. The best-case baseline ER_k adds
the same number of counterparts with their **original** English responses.

Where the counterparts come from (``mitigation.replay.counterparts`` in the parameter file):

* ``link: counterpart_id`` — every Phase 2 record names its English original (sandbox sets; mOpenOrca ->
  OpenOrca). The replay pool is the set of distinct originals of the Phase 2 records, in Phase 2 order.
* ``link: sample`` — no per-record link exists (MultiAlpaca was self-instructed from translated Alpaca seed
  tasks): the pool is the English records of the counterpart dataset (Alpaca), and GR/ER draw a seeded sample.

Selection is seeded and nested: the pool is shuffled once with ``mitigation.seed``; ER_k takes the first
``n`` records; GR_k walks the same order and keeps the first ``n`` acceptable generations. Generations are
checked and **counted** (never silently kept): *empty* (always dropped: an empty response is not a training
target), *truncated* (hit ``max_new_tokens`` without EOS) and *degenerate* (one word n-gram repeated
``degenerate_max_repeats`` times or more); the last two are dropped unless the profile keeps them. If the pool
runs out before ``n`` acceptable answers are found, :class:`ReplayError` says so with the counts: the mix has
exactly the promised size or there is no mix.

A replay set is saved with ``datasets.Dataset.save_to_disk`` under ``$CFT_HOME/replay/<content id>/`` with a
``provenance.json`` (the generating model's run id, counts, seed, generation settings, timings) and reused:
the content id hashes the model run id, the pool's fingerprint, the size, the seed and the generation settings
(not the batch size: a left-padded row decodes like the row alone).

The strategies ``strategies/gr.py`` and ``strategies/er.py`` are :class:`ReplayStrategy` subclasses: the
shared settings (``mitigation.replay``: counterparts and generation) are resolved into each run's parameters when
it is planned, and the replay set is built from those.

Example::

    from cft_utils.config import load_config
    from cft_utils.mitigation import plan, replay
    cfg = load_config("sandbox")
    run = next(r for r in plan.plan_mitigations(cfg) if r.strategy == "GR_5")
    records, info = replay.replay_mix(cfg, run, "GR", 5)   # 5 % of the Phase 2 set, answered by Instruct
"""

from __future__ import annotations

import collections
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from .. import models
from ..config import CounterpartSpec, ExperimentConfig, GenerationSpec
from ..data.loaders import dataset_fingerprint, load_records
from ..integrity import is_complete, mark_complete
from ..io import read_json, write_json
from ..locks import exclusive
from ..models import Generation
from ..paths import cft_home
from ..plan import model_spec
from ..runs import RunPlan
from ..runs import run_id as content_id
from .base import Cell, Hooks, Parameters, TrainingStrategy


class ReplayError(RuntimeError):
    """Replay data cannot be built as promised (missing counterparts, too few acceptable generations)."""


# ------------------------------------------------------------------------------------------- counterparts


def replay_size(n_phase2: int, percent: float) -> int:
    """k % of the Phase 2 set's size, rounded half up (5 % of 32 records -> 2)."""
    if n_phase2 < 0 or not 0 < percent <= 100:
        raise ValueError(f"need n_phase2 >= 0 and 0 < percent <= 100, got {n_phase2}, {percent}")
    return int(math.floor(n_phase2 * percent / 100 + 0.5))


def counterpart_records(cfg: ExperimentConfig, phase2_key: str, spec: CounterpartSpec) -> tuple[list[dict], str]:
    """The records of a Phase 2 set's counterpart dataset (a key of ``datasets`` or an inline spec) and the link."""
    if isinstance(spec.dataset, str):
        return load_records(cfg, spec.dataset), spec.link
    key = f"{phase2_key}__counterparts"
    tmp = cfg.model_copy(update={"datasets": {**cfg.datasets, key: spec.dataset}})
    return load_records(tmp, key), spec.link


def english_pool(phase2: Sequence[dict], counterparts: Sequence[dict], link: str, where: str = "") -> list[dict]:
    """The English records replay may use, in a canonical order (see the module docstring).

    ``link="counterpart_id"``: the distinct originals named by the Phase 2 records (in Phase 2 order); a
    Phase 2 record without a ``counterpart_id`` or naming an unknown id raises :class:`ReplayError` with counts.
    ``link="sample"``: every English record of ``counterparts``.
    """
    english = [r for r in counterparts if r.get("language") == "en"]
    if link == "sample":
        if not english:
            raise ReplayError(f"{where}: the counterpart dataset holds no English records")
        return english
    if link != "counterpart_id":
        raise ValueError(f"unknown link {link!r} (counterpart_id | sample)")
    by_id = {r["id"]: r for r in english}
    pool, seen, no_link, unknown = [], set(), [], []
    for r in phase2:
        cid = r.get("counterpart_id")
        if cid is None:
            no_link.append(r["id"])
        elif cid not in by_id:
            unknown.append(cid)
        elif cid not in seen:
            seen.add(cid)
            pool.append(by_id[cid])
    if no_link or unknown:
        raise ReplayError(
            f"{where}: {len(no_link)} Phase 2 record(s) have no counterpart_id (e.g. {no_link[:2]}) and "
            f"{len(unknown)} name an id missing from the English counterparts (e.g. {unknown[:2]}); use "
            f"link: sample for a dataset without per-record links")
    return pool


def seeded_order(pool: Sequence[dict], seed: int) -> list[dict]:
    """The pool shuffled with ``seed`` (by id, so the order does not depend on how the pool was listed)."""
    ordered = sorted(pool, key=lambda r: r["id"])
    random.Random(f"replay-{seed}").shuffle(ordered)
    return ordered


# ------------------------------------------------------------------------------------------- generation


def vllm_generate(model_dir: str | Path, prompts: Sequence[list[dict]], max_new_tokens: int, seed: int,
                  trust_remote_code: bool = False) -> list[Generation]:
    """Greedy answers with vLLM (GPU runs; the ``gpu`` extra). ``finish_reason == "length"`` means truncated."""
    try:
        from vllm import LLM, SamplingParams
    except ImportError as err:  # pragma: no cover - vLLM is not installed on CPU machines
        raise ImportError("generation backend 'vllm' needs the vllm package (pip install '.[gpu]'); "
                          "set mitigation.replay.generation.backend: hf to generate in-process") from err
    llm = LLM(model=str(model_dir), seed=seed, trust_remote_code=trust_remote_code)  # pragma: no cover
    params = SamplingParams(temperature=0.0, max_tokens=max_new_tokens, seed=seed)  # pragma: no cover
    results = llm.chat([list(p) for p in prompts], params, use_tqdm=True)  # pragma: no cover
    return [Generation(r.outputs[0].text.strip(), r.outputs[0].finish_reason != "length")  # pragma: no cover
            for r in results]


def max_ngram_repeats(text: str, n: int) -> int:
    """How often the most frequent word n-gram of ``text`` occurs (0 for texts shorter than n words)."""
    words = text.split()
    counts = collections.Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return max(counts.values(), default=0)


def classify(gen: Generation, spec: GenerationSpec) -> str:
    """'empty', 'truncated', 'degenerate' or 'ok' (checked in that order: one reason per answer)."""
    if not gen.text.strip():
        return "empty"
    if not gen.finished:
        return "truncated"
    if max_ngram_repeats(gen.text, spec.degenerate_ngram) >= spec.degenerate_max_repeats:
        return "degenerate"
    return "ok"


def accept(reason: str, spec: GenerationSpec) -> bool:
    """Whether an answer with this classification goes into the replay set."""
    return reason == "ok" or (reason == "truncated" and spec.keep_truncated) or (
        reason == "degenerate" and spec.keep_degenerate)


def generate_replay(ordered_pool: Sequence[dict], n: int, generate: Callable[[list[list[dict]]], list[Generation]],
                    spec: GenerationSpec, dataset: str = "replay") -> tuple[list[dict], dict]:
    """Walk ``ordered_pool`` and keep the first ``n`` acceptable generations; return (records, counts).

    ``generate(prompts)`` answers a list of chat prompts. Candidates are generated in rounds (the shortfall plus
    a margin for rejects, at least one batch), so a good model costs about ``n`` generations. Counts hold
    ``generated`` and one entry per classification (``ok``, ``empty``, ``truncated``, ``degenerate``) plus
    ``kept_truncated``/``kept_degenerate``. Raises :class:`ReplayError` when the pool runs out.
    """
    counts = {"generated": 0, "ok": 0, "empty": 0, "truncated": 0, "degenerate": 0,
              "kept_truncated": 0, "kept_degenerate": 0}
    kept: list[dict] = []
    pos = 0
    while len(kept) < n:
        if pos >= len(ordered_pool):
            raise ReplayError(
                f"only {len(kept)} of {n} acceptable replay answers from a pool of {len(ordered_pool)} prompts "
                f"(counts: {counts}); raise max_new_tokens, keep truncated/degenerate answers, or lower the share")
        want = n - len(kept)
        take = max(math.ceil(want * 1.25) + 1, min(spec.batch_size, want * 4))
        chunk = list(ordered_pool[pos:pos + take])
        pos += len(chunk)
        gens = generate([r["prompt"] for r in chunk])
        if len(gens) != len(chunk):
            raise ReplayError(f"the generator returned {len(gens)} answers for {len(chunk)} prompts")
        for rec, gen in zip(chunk, gens, strict=True):
            counts["generated"] += 1
            reason = classify(gen, spec)
            counts[reason] += 1
            if len(kept) < n and accept(reason, spec):
                if reason != "ok":
                    counts[f"kept_{reason}"] += 1
                kept.append({"id": f"gr-{rec['id']}", "dataset": dataset, "language": "en",
                             "counterpart_id": None, "prompt": rec["prompt"],
                             "completion": [{"role": "assistant", "content": gen.text}],
                             "replay_of": rec["id"], "replay_check": reason})
    return kept, counts


def english_replay(ordered_pool: Sequence[dict], n: int, dataset: str = "replay") -> list[dict]:
    """ER: the first ``n`` records of the seeded pool with their original English responses."""
    if n > len(ordered_pool):
        raise ReplayError(f"ER needs {n} English counterparts but the pool holds {len(ordered_pool)}")
    return [{"id": f"er-{r['id']}", "dataset": dataset, "language": "en", "counterpart_id": None,
             "prompt": r["prompt"], "completion": r["completion"], "replay_of": r["id"],
             "replay_check": "original"} for r in ordered_pool[:n]]


# ------------------------------------------------------------------------------------------- the cache


def replay_dir(cid: str) -> Path:
    """Where a replay set with content id ``cid`` lives."""
    return cft_home() / "replay" / cid


def _save(records: list[dict], prov: dict, out: Path) -> None:
    import shutil

    from datasets import Dataset

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    Dataset.from_list(records).save_to_disk(str(tmp))
    write_json(tmp / "provenance.json", prov)
    mark_complete(tmp, content_id=prov.get("content_id"))  # sizes and hashes, verified on reuse
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def load_replay_set(path: Path) -> tuple[list[dict], dict]:
    """A saved replay set: (records, provenance)."""
    from datasets import load_from_disk

    return [dict(r) for r in load_from_disk(str(path))], read_json(path / "provenance.json")


def build_replay_set(cfg: ExperimentConfig, run: RunPlan, kind: str, percent: float, progress: bool = True
                     ) -> tuple[list[dict], dict]:
    """The GR or ER set of a replay run (a planned mitigation run): built once, then read from disk.

    ``run.parent`` is the Phase 1 model that answers (GR); ``run.data_key`` the Phase 2 set; the counterpart
    source, the seed and the generation settings come from the run's parameters (``run.variant.params``)."""
    if kind not in ("GR", "ER"):
        raise ValueError(f"kind must be 'GR' or 'ER', got {kind!r}")
    params = run.variant.params
    parent = run.parent
    if params.get("counterparts") is None:
        raise ReplayError(f"{cfg.source_file}: mitigation.replay.counterparts has no entry for {run.data_key!r}")
    seed = params["replay_seed"]
    phase2 = load_records(cfg, run.data_key)
    counterparts, link = counterpart_records(cfg, run.data_key, CounterpartSpec(**params["counterparts"]))
    pool = english_pool(phase2, counterparts, link, where=f"{cfg.source_file}: {run.data_key}")
    n = replay_size(len(phase2), percent)
    identity = {"kind": kind, "phase2": run.data_key, "phase2_fingerprint": dataset_fingerprint(phase2),
                "pool_fingerprint": dataset_fingerprint(pool), "link": link, "n": n, "seed": seed}
    gen = None
    if kind == "GR":
        # batch_size does not change the answers (a left-padded row decodes like the row alone): not in the id
        gen = GenerationSpec(**params["generation"], batch_size=cfg.mitigation.replay.generation.batch_size)
        identity |= {"model_run": parent.run_id, "generation": params["generation"]}
    cid = content_id(identity, f"{kind.lower()}")
    out = replay_dir(cid)
    if is_complete(out, what=f"replay set {cid}"):
        return load_replay_set(out)
    # One writer per replay set: a second process waits, then reads what the first one built.
    with exclusive(out, what=f"replay set {cid} ({run.name})"):
        if is_complete(out, what=f"replay set {cid}"):
            return load_replay_set(out)
        return _build_replay_set(cfg, run, kind, percent, progress, identity, cid, out, pool, phase2, n, gen, seed)


def _build_replay_set(cfg, run, kind, percent, progress, identity, cid, out, pool, phase2, n, gen, seed):
    parent = run.parent
    ordered = seeded_order(pool, seed)
    t0 = time.time()
    name = f"replay_{kind.lower()}_{run.data_key}"
    if kind == "ER":
        records, counts = english_replay(ordered, n, name), {}
    else:
        if not parent.done():
            raise ReplayError(f"GR needs the Phase 1 model {parent.name} ({parent.run_id}); train it first")
        generate = _generator(cfg, parent, gen, seed, progress)
        records, counts = generate_replay(ordered, n, generate, gen, name)
    if len(records) != n or any(r["language"] != "en" for r in records):
        raise ReplayError(f"replay set has {len(records)} records (promised {n}) or non-English ones")
    prov = {"content_id": cid, **identity, "model_dir": str(parent.model_dir) if kind == "GR" else None,
            "percent": percent, "n_phase2": len(phase2), "pool_size": len(pool), "n_replay": len(records),
            "counts": counts, "seconds": round(time.time() - t0, 2),
            "backend": gen.backend if kind == "GR" else None}
    _save(records, prov, out)
    return records, prov


def _generator(cfg: ExperimentConfig, parent: RunPlan, gen: GenerationSpec, seed: int, progress: bool):
    mspec = model_spec(cfg, parent.model)
    if gen.backend == "openai-server":  # `vllm serve <Phase 1 model folder>` running at base_url
        base_url = gen.base_url or os.environ.get("CFT_GENERATION_BASE_URL")
        if not base_url:
            raise ReplayError("generation backend 'openai-server' needs mitigation.replay.generation.base_url "
                              "(or $CFT_GENERATION_BASE_URL), e.g. http://127.0.0.1:8000/v1")
        tok = models.load_tokenizer(parent.model_dir, trust_remote_code=mspec.trust_remote_code)
        served = gen.served_model or str(parent.model_dir)
        return lambda prompts: models.generate_openai(base_url, served, prompts, gen.max_new_tokens, tokenizer=tok,
                                                      seed=seed)
    if gen.backend == "vllm":
        return lambda prompts: vllm_generate(parent.model_dir, prompts, gen.max_new_tokens, seed,
                                             mspec.trust_remote_code)
    import torch

    cuda = torch.cuda.is_available()
    tok = models.load_tokenizer(parent.model_dir, trust_remote_code=mspec.trust_remote_code)
    model = models.load_model(parent.model_dir, "bf16" if cuda else "fp32", trust_remote_code=mspec.trust_remote_code,
                              device="cuda" if cuda else None)
    return lambda prompts: models.generate(model, tok, prompts, gen.max_new_tokens, gen.batch_size, progress)


def replay_mix(cfg: ExperimentConfig, run: RunPlan, kind: str, percent: float, progress: bool = True
               ) -> tuple[list[dict], dict]:
    """The replay records to add to Phase 2 and the mix's make-up (sizes and languages), for provenance.

    The returned ``info`` has ``n_phase2``, ``n_replay`` (== round(percent % of n_phase2)), ``replay_share``,
    ``languages_phase2``, ``languages_replay`` and ``languages_mix`` (record counts per language), and the
    replay set's id, path and filter counts.
    """
    records, prov = build_replay_set(cfg, run, kind, percent, progress)
    phase2 = load_records(cfg, run.data_key)
    promised = replay_size(len(phase2), percent)
    if len(records) != promised:
        raise ReplayError(f"{run.name}: replay set {prov['content_id']} has {len(records)} records, promised {promised}")
    langs_p2 = collections.Counter(r["language"] for r in phase2)
    langs_rp = collections.Counter(r["language"] for r in records)
    info = {"kind": kind, "percent": percent, "n_phase2": len(phase2), "n_replay": len(records),
            "n_total": len(phase2) + len(records),
            "replay_share": len(records) / (len(phase2) + len(records)),
            "languages_phase2": dict(sorted(langs_p2.items())), "languages_replay": dict(sorted(langs_rp.items())),
            "languages_mix": dict(sorted((langs_p2 + langs_rp).items())),
            "replay_set": prov["content_id"], "replay_path": str(replay_dir(prov["content_id"])),
            "counts": prov["counts"], "model_run": prov.get("model_run"), "seed": prov["seed"]}
    return records, info


# ------------------------------------------------------------------------------------------- the strategies


Percent = Annotated[float, Field(gt=0, le=100)]


class PercentsParams(Parameters):
    """Replay shares: one run per k, adding k % of the Phase 2 set's size (rounded half up)."""

    percents: list[Percent]

    @field_validator("percents")
    @classmethod
    def _distinct(cls, v):
        if not v or len(set(v)) != len(v):
            raise ValueError(f"need distinct percents, at least one (duplicate labels otherwise): {v}")
        return v


class ReplayStrategy(TrainingStrategy):
    """Base of the replay strategies: English records added to Phase 2, k % of its size per variant.

    The shared settings (``mitigation.replay``: the counterpart source of each Phase 2 set and, for generative
    replay, the generation settings) become part of each run's parameters when it is planned."""

    adds_records = True
    generative = False

    def check(self, params, cfg: ExperimentConfig) -> None:
        mit = cfg.mitigation
        missing = sorted({c.data for c in mit.cells} - set(mit.replay.counterparts))
        if missing:
            raise ValueError(f"mitigation.replay.counterparts: no counterpart source for Phase 2 data {missing} "
                             f"({self.name} needs the English counterparts)")

    def variants(self, params, cell: Cell) -> list[tuple[str, dict]]:
        mit = cell.cfg.mitigation
        cp = mit.replay.counterparts.get(cell.baseline.data_key)
        common = {"counterparts": cp.model_dump() if cp else None, "replay_seed": mit.seed}
        if self.generative:
            common["generation"] = mit.replay.generation.model_dump(exclude={"batch_size"})
        return self.numbered(params.percents, "percent", **common)

    def prepare(self, run: RunPlan, cfg: ExperimentConfig, progress: bool = True) -> Hooks:
        """Build the replay set once (main process; the others wait and read it) and add it to Phase 2."""
        import torch
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        percent = run.variant.params["percent"]
        if state.is_main_process:  # generate once; the other ranks read the saved set
            replay_mix(cfg, run, self.name, percent, progress)
        state.wait_for_everyone()
        records, mix = replay_mix(cfg, run, self.name, percent, progress=False)
        return Hooks(extra_records=records, info={"replay": mix})

    def summary(self, info: dict) -> dict:
        r = info.get("replay", {})
        return {k: r.get(k) for k in ("n_phase2", "n_replay", "n_total", "languages_mix", "replay_set")}


# ------------------------------------------------------------------------------------------- notebook 07


def replay_sets(cfg: ExperimentConfig, runs: Sequence[RunPlan], progress: bool = True):
    """One row per replay run: its set's id, the Phase 2 size, the promised and delivered replay sizes, the share,
    the language make-up of the mix and the generation checks (``gen_*`` counts). Builds missing sets."""
    import pandas as pd

    rows = []
    for run in runs:
        percent = run.variant.params["percent"]
        _, info = replay_mix(cfg, run, run.variant.strategy, percent, progress)
        rows.append({"run": run.name, "strategy": run.strategy, "replay_set": info["replay_set"],
                     "n_phase2": info["n_phase2"], "promised": replay_size(info["n_phase2"], percent),
                     "n_replay": info["n_replay"], "replay_share": round(info["replay_share"], 4),
                     "languages_mix": info["languages_mix"], **{f"gen_{k}": v for k, v in info["counts"].items()}})
    return pd.DataFrame(rows)


def replay_examples(cfg: ExperimentConfig, runs: Sequence[RunPlan], n: int = 6, width: int = 90):
    """What the Phase 1 model wrote: the first ``n`` answers of the first generative replay run, beside the
    original English answer of the same instruction where an English replay run of the same cell sampled it."""
    import pandas as pd

    def generative(r):  # a generative replay run carries its generation settings
        return "generation" in r.variant.params

    gr = next((r for r in runs if generative(r)), None)
    if gr is None:
        return pd.DataFrame()
    gr_records, _ = replay_mix(cfg, gr, gr.variant.strategy, gr.variant.params["percent"], progress=False)
    er = next((r for r in runs if not generative(r) and r.phase2_data == gr.phase2_data), None)
    originals = {}
    if er is not None:
        er_records, _ = replay_mix(cfg, er, er.variant.strategy, er.variant.params["percent"], progress=False)
        originals = {r["replay_of"]: r["completion"][0]["content"] for r in er_records}
    return pd.DataFrame([{"instruction": r["prompt"][-1]["content"][:width],
                          f"Phase 1 model ({gr.strategy})": r["completion"][0]["content"][:width],
                          "original (ER)": originals.get(r["replay_of"], "(not in the ER sample)")[:width],
                          "check": r["replay_check"]} for r in gr_records[:n]])
