"""DES over a profile's datasets (notebook 05): the matrix with its settings, the paper's values beside ours, and
whether the paper's orderings hold.

:mod:`cft_utils.analysis.des` computes DES on plain data; this module applies it to a profile: every dataset of the
profile plus, in the sandbox, the world's Instruct mixture (the data the sandbox Instruct model was trained on), with
bootstrap intervals and ordering checks (do the similar pairs score higher than the dissimilar ones?).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from cft_utils.analysis.des import DEFAULT_FIELDS, DEFAULT_SAMPLE_SIZE, des, des_matrix
from cft_utils.analysis.encoders import (
    encoder_training_info,
    parallel_pairs,
    sandbox_encoder_dir,
    translation_retrieval_accuracy,
)
from cft_utils.data.loaders import load_records
from cft_utils.paper import paper_values
from cft_utils.sandbox.world import world_for

#: Name of the Instruct data in DES tables (the sandbox world's ``instruct`` mixture, or a stand-in).
INSTRUCT = "instruct"

#: The paper's orderings as (closer pair, farther pair): each Phase 1 set is closer to the Phase 2 set with
#: the same tasks (§3.3: Alpaca-MultiAlpaca 0.924 > Alpaca-mOpenOrca 0.792; OpenOrca-mOpenOrca 0.953 >
#: OpenOrca-MultiAlpaca 0.774), each Phase 2 set closer to the Phase 1 set with its tasks, and the Instruct
#: data farther from MultiAlpaca than Alpaca is (MPD: Alpaca lowest, Instruct higher).
PAPER_ORDERING = (
    (("alpaca", "multialpaca"), ("alpaca", "mopenorca")),
    (("openorca", "mopenorca"), ("openorca", "multialpaca")),
    (("alpaca", "multialpaca"), ("openorca", "multialpaca")),
    (("openorca", "mopenorca"), ("alpaca", "mopenorca")),
    (("alpaca", "multialpaca"), (INSTRUCT, "multialpaca")),
)


def dataset_label(data_key: str) -> str:
    """Dataset label in DES/MPD tables: the grid's ``Instruct`` is the ``instruct`` data."""
    return INSTRUCT if data_key == "Instruct" else data_key


def instruct_records(cfg, stand_in: str | None = None) -> tuple[list[dict], str]:
    """(records, note) standing for the Instruct models' undisclosed data.

    In the sandbox: the world's ``instruct`` mixture, which *is* the sandbox Instruct model's data. Without
    a sandbox: the dataset ``stand_in`` of the profile (default ``alpaca``, a public instruction set of the
    same general kind; the real Instruct data of Mistral/LLaMA-3 is not published).
    """
    if cfg.sandbox is not None and stand_in is None:
        return world_for(cfg.sandbox.world_spec()).dataset("instruct"), (
            "the sandbox world's instruct mixture (the data the sandbox Instruct model was trained on)")
    key = stand_in or "alpaca"
    if key not in cfg.datasets:
        raise KeyError(f"{cfg.source_file}: no dataset {key!r} to stand in for the Instruct data "
                       f"(have {sorted(cfg.datasets)})")
    return load_records(cfg, key), (f"stand-in: the profile's {key!r} set (the Instruct models' own "
                                    "instruction data is not published)")


def des_datasets(cfg, include_instruct: bool = True) -> dict[str, list[dict]]:
    """Every dataset of the profile by key, plus (sandbox only) the world's Instruct mixture as ``instruct``."""
    out = {key: load_records(cfg, key) for key in cfg.datasets}
    if include_instruct and cfg.sandbox is not None and INSTRUCT not in out:
        out[INSTRUCT] = instruct_records(cfg)[0]
    return out


def des_study(datasets: Mapping[str, Sequence], encoder, *, encoder_name: str = "", profile: str = "",
              n: int | None = DEFAULT_SAMPLE_SIZE, fields: Sequence[str] = DEFAULT_FIELDS,
              seed: int = 0, n_boot: int = 1000, ci: float = 0.95) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tidy DES table with the settings as columns, square matrix) over ``datasets``; see ``des_matrix``."""
    table, matrix = des_matrix(datasets, encoder, fields=fields, n=n, seed=seed, n_boot=n_boot, ci=ci)
    table.insert(0, "profile", profile)
    table.insert(1, "encoder", encoder_name)
    table["fields"] = "+".join(fields)
    table["sample_size"] = n
    table["seed"] = seed
    table["n_boot"] = n_boot
    table["ci_level"] = ci
    return table, matrix


def with_paper_des(table: pd.DataFrame, path=None) -> pd.DataFrame:
    """``table`` (columns a, b) with a ``paper_des`` column: the paper's LaBSE value for the pair, else NaN."""
    paper = paper_values(benchmark="DES", dataset_keys=True, path=path)
    lookup = {frozenset((r.phase1_data, r.phase2_data)): r.value for r in paper.itertuples()}
    out = table.copy()
    out["paper_des"] = [lookup.get(frozenset((a, b)), math.nan) for a, b in zip(out["a"], out["b"], strict=True)]
    return out


def pair_row(table: pd.DataFrame, pair: tuple[str, str]):
    """The row of ``table`` (columns a, b) for the unordered ``pair``, or None."""
    a, b = pair
    hit = table[((table["a"] == a) & (table["b"] == b)) | ((table["a"] == b) & (table["b"] == a))]
    return None if hit.empty else hit.iloc[0]


def ordering_checks(table: pd.DataFrame, comparisons=PAPER_ORDERING, value: str = "des",
                    higher_is_closer: bool = True, lo: str | None = "ci_lo",
                    hi: str | None = "ci_hi") -> pd.DataFrame:
    """Whether each expected (closer pair, farther pair) ordering holds in ``table`` (columns a, b, value).

    ``holds``: the point values order as expected; ``separated``: the intervals (``lo``/``hi`` columns,
    when present) do not overlap, so the ordering is not sampling noise. Comparisons whose datasets are
    not in the table are left out.
    """
    rows = []
    for closer, farther in comparisons:
        rc, rf = pair_row(table, closer), pair_row(table, farther)
        if rc is None or rf is None:
            continue
        vc, vf = float(rc[value]), float(rf[value])
        holds = vc > vf if higher_is_closer else vc < vf
        has_ci = lo in table.columns and hi in table.columns if lo and hi else False
        if has_ci and all(np.isfinite([rc[lo], rc[hi], rf[lo], rf[hi]])):
            separated = bool(rc[lo] > rf[hi]) if higher_is_closer else bool(rc[hi] < rf[lo])
        else:
            separated = None
        rows.append({"closer_pair": "–".join(closer), "closer": vc, "farther_pair": "–".join(farther),
                     "farther": vf, "holds": bool(holds), "separated": separated})
    return pd.DataFrame(rows, columns=["closer_pair", "closer", "farther_pair", "farther", "holds", "separated"])


def describe_orderings(checks: pd.DataFrame, measure: str = "DES") -> str:
    """A plain-language summary, with the numbers, of :func:`ordering_checks` output."""
    if checks.empty:
        return f"{measure}: none of the expected orderings can be checked (datasets missing)."
    lines = []
    for r in checks.itertuples():
        verdict = "holds" if r.holds else "does NOT hold"
        sep = {True: ", intervals separate", False: ", but the intervals overlap", None: ""}[r.separated]
        lines.append(f"- {r.closer_pair} ({r.closer:.3f}) closer than {r.farther_pair} ({r.farther:.3f}): "
                     f"{verdict}{sep if r.holds else ''}")
    n_hold = int(checks["holds"].sum())
    return (f"{measure}: the paper's ordering holds in {n_hold} of {len(checks)} comparisons.\n"
            + "\n".join(lines))


def dataset_sizes(datasets: Mapping[str, Sequence]) -> pd.DataFrame:
    """Records per dataset, one row each (column ``records``)."""
    return pd.Series({k: len(v) for k, v in datasets.items()}, name="records").to_frame()


def des_table(cfg, encoder, encoder_name: str = "", datasets: Mapping[str, Sequence] | None = None
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(tidy DES table, square matrix) over ``datasets`` (default :func:`des_datasets`) with the profile's
    ``analysis.des`` settings.

    The paper's LaBSE values are added as ``paper_des`` when ``analysis.des.with_paper`` says so (None: only
    without a sandbox, where the datasets are the real ones).
    """
    d = cfg.analysis.des
    table, matrix = des_study(des_datasets(cfg) if datasets is None else datasets, encoder, encoder_name=encoder_name, profile=cfg.profile,
                              n=d.n_samples, fields=d.fields, seed=d.seed, n_boot=d.n_boot, ci=d.ci)
    with_paper = cfg.sandbox is None if d.with_paper is None else d.with_paper
    return (with_paper_des(table) if with_paper else table), matrix


def encoder_check(cfg, encoder, n: int = 200, n_languages: int = 2) -> pd.DataFrame:
    """Sandbox only: is the encoder language-agnostic? Retrieval accuracy en -> language on ``n`` held-out pairs.

    One row per language (language, n, retrieval_accuracy, chance) with the encoder's training marker (pairs, steps,
    seconds, first and final loss); empty without a sandbox (LaBSE needs no check here).
    """
    if cfg.sandbox is None:
        return pd.DataFrame()
    world = world_for(cfg.sandbox.world_spec())
    info = encoder_training_info(sandbox_encoder_dir(cfg))
    held_out = [en for en, _ in parallel_pairs(world, n, seed=cfg.seed + 1)]
    rows = []
    for lang in world.other_languages[:n_languages]:
        acc = translation_retrieval_accuracy(encoder, held_out, [world.translate(s, lang) for s in held_out])
        rows.append({"language": lang, "n": n, "retrieval_accuracy": acc, "chance": 1 / n,
                     **{k: info[k] for k in ("n_pairs", "steps", "train_seconds", "first_loss", "final_loss")}})
    return pd.DataFrame(rows)


def translation_check(cfg, encoder, table: pd.DataFrame, original: str = "multialpaca_en",
                      translated: str = "multialpaca", unrelated: tuple[str, str] = ("alpaca", "mopenorca")
                      ) -> pd.DataFrame:
    """Sandbox only: DES of a set and its exact translation against DES of two sets with different tasks.

    Returns rows (pair, kind, des, ci_lo, ci_hi) and the verdicts as columns ``translation_higher`` and
    ``separated``; empty without a sandbox (the real datasets have no exact translations).
    """
    if cfg.sandbox is None:
        return pd.DataFrame()
    d = cfg.analysis.des
    world = world_for(cfg.sandbox.world_spec())
    same = des(world.dataset(original), load_records(cfg, translated), encoder, fields=d.fields, n=d.n_samples,
               seed=d.seed, n_boot=d.n_boot, ci=d.ci)
    other = pair_row(table, unrelated)
    if other is None:
        raise KeyError(f"the DES table has no pair {unrelated}")
    out = pd.DataFrame([
        {"pair": f"{original} – {translated}", "kind": "a set and its translation", "des": same.des,
         "ci_lo": same.ci_lo, "ci_hi": same.ci_hi},
        {"pair": " – ".join(unrelated), "kind": "different tasks", "des": float(other["des"]),
         "ci_lo": float(other["ci_lo"]), "ci_hi": float(other["ci_hi"])}])
    return out.assign(translation_higher=same.des > float(other["des"]),
                      separated=bool(same.ci_lo > float(other["ci_hi"])))


def off_diagonal(table: pd.DataFrame) -> pd.DataFrame:
    """The pairs of different datasets: a, b, des, the interval and, when present, the paper's value."""
    cols = ["a", "b", "des", "ci_lo", "ci_hi"] + (["paper_des"] if "paper_des" in table.columns else [])
    return table[table["a"] != table["b"]][cols].reset_index(drop=True)
