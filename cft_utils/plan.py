"""The run grid of a profile: which runs exist, what each starts from, and their content-addressed ids.

``plan_runs(cfg)`` resolves the profile's two-phase grid into :class:`cft_utils.runs.RunPlan` objects (nothing is
trained here): for every model, one Phase 1 run per English dataset (plus the Instruct model: built in the sandbox,
registered as it is otherwise) and one Phase 2 run per cell of ``grid.phase2``, whose ``parent`` is its Phase 1
run. The mitigation runs are planned on top of this by ``cft_utils.mitigation.plan``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from .config import ExperimentConfig, ModelSpec, TrainingSpec
from .integrity import file_sha256
from .io import write_text
from .models import (
    ChatTemplateError,
    load_tokenizer,
    model_fingerprint,
    read_chat_template,
    require_chat_template,
)
from .paths import cft_home
from .runs import RunPlan, run_id
from .sandbox.build import ensure_sandbox

# Hyper-parameters that do not change what is learnt: left out of run ids.
NON_SEMANTIC_HPARAMS = {"report_to", "num_threads", "save_steps", "save_total_limit", "logging_steps"}


@dataclass
class Plan:
    """The Phase 1 and Phase 2 runs of a profile's grid."""

    phase1: list[RunPlan]
    phase2: list[RunPlan]

    def all(self) -> list[RunPlan]:
        return self.phase1 + self.phase2

    def get(self, name: str, seed: int | None = None) -> RunPlan:
        """The run called ``name``; a name without its ``/s<seed>`` suffix is accepted with ``seed``, or alone when
        the profile has one training seed."""
        return find_run(self.all(), name, seed)

    def table(self):
        """One row per run: name, id, phase, cell, strategy, done."""
        import pandas as pd

        return pd.DataFrame([{"name": r.name, "run_id": r.run_id, "phase": r.phase, "model": r.model,
                              "phase1_data": r.phase1_data, "phase2_data": r.phase2_data or "",
                              "strategy": r.strategy, "seed": r.seed, "done": r.done()} for r in self.all()])


def find_run(runs: list[RunPlan], name: str, seed: int | None = None) -> RunPlan:
    """The run called ``name`` (see :meth:`Plan.get`); a KeyError lists the names there are."""
    exact = [r for r in runs if r.name == name and (seed is None or r.seed == seed)]
    if exact:
        return exact[0]
    by_cell = [r for r in runs if r.cell == name and (seed is None or r.seed == seed)]
    if len(by_cell) == 1:
        return by_cell[0]
    if by_cell:
        raise KeyError(f"{name!r} names one run per seed {sorted(r.seed for r in by_cell)}: add /s<seed> or seed=")
    raise KeyError(f"no run named {name!r}; runs: {[r.name for r in runs]}")


def model_spec(cfg: ExperimentConfig, name: str) -> ModelSpec:
    """The profile's model called ``name`` (a KeyError names the parameter file and the known names)."""
    for m in cfg.models:
        if m.name == name:
            return m
    raise KeyError(f"{cfg.source_file}: no model named {name!r} (have {[m.name for m in cfg.models]})")


def semantic_hparams(h: TrainingSpec) -> dict:
    """The hyper-parameters that change what is learnt (the part of a run id they contribute). Extra TRL arguments
    (``trl``) and the training attention count when given; left unset they are left out, so runs planned before the
    fields existed keep their ids."""
    d = h.model_dump(exclude=NON_SEMANTIC_HPARAMS)
    for optional in ("trl", "attn_implementation"):  # fields added later: left out when unset
        if not d.get(optional):
            d.pop(optional, None)
    return d


def hub_commit(repo_id: str, revision: str | None = None, repo_type: str = "model") -> str | None:
    """The commit a hub id (and revision) stands for: a pinned 40-hex revision itself, else the local hub cache's
    ref, else one metadata call to the hub (skipped offline); None when none of them can tell. ``repo_type``:
    ``model`` or ``dataset``."""
    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    try:
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        ref = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type=repo_type) / "refs" / (
            revision or "main")
        if ref.is_file():
            return ref.read_text().strip()
        if constants.HF_HUB_OFFLINE:
            return None
        from huggingface_hub import HfApi

        info = HfApi().dataset_info if repo_type == "dataset" else HfApi().model_info
        return info(repo_id, revision=revision).sha
    except Exception:  # no cache entry and no hub: the id and revision are all we know
        return None


_IDENTITY_CACHE: dict[tuple, dict] = {}


def model_identity(source: str, revision: str | None = None) -> dict:
    """What identifies a model in run ids: a local folder by its content (:func:`cft_utils.models.model_fingerprint`:
    config, tokenizer, chat template, safetensors headers and samples), a hub id by the commit it resolves to."""
    p = Path(source).expanduser()
    if p.is_dir():
        stamp = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in sorted(p.iterdir()) if f.is_file())
        key = (str(p.resolve()), stamp)
        if key not in _IDENTITY_CACHE:
            _IDENTITY_CACHE[key] = {"base": source, "fingerprint": model_fingerprint(p)}
        return _IDENTITY_CACHE[key]
    key = (source, revision)
    if key not in _IDENTITY_CACHE:
        _IDENTITY_CACHE[key] = {"base": source, "revision": revision, "commit": hub_commit(source, revision)}
    return _IDENTITY_CACHE[key]


def chat_template_identity(m: ModelSpec) -> dict:
    """What identifies a model's configured chat template in run ids (empty for the tokenizer's own, which the
    model's fingerprint covers): the template file's content hash, or the Instruct model's identity."""
    if m.chat_template == "tokenizer":
        return {}
    if m.chat_template == "instruct":
        return {"chat_template": {"instruct": model_identity(m.instruct, m.revision)}}
    text = m.chat_template_file().read_bytes()
    return {"chat_template": {"file": m.chat_template, "sha256": hashlib.sha256(text).hexdigest()[:16]}}


def base_identity(cfg: ExperimentConfig, m: ModelSpec) -> dict:
    """What identifies a model's base in run ids: the sandbox world and base-model spec, or the model's content
    (:func:`model_identity`: a folder changed in place gets new run ids); and its chat-template setting."""
    if m.base == "sandbox":
        return {"sandbox_world": cfg.sandbox.world_spec().world_id(), "sandbox_model": cfg.sandbox.model.model_dump(exclude_none=True),
                **chat_template_identity(m)}  # fields left at None are left out: adding one renames no run
    return {**model_identity(m.base, m.revision), **chat_template_identity(m)}


def configured_chat_template(cfg: ExperimentConfig, m: ModelSpec) -> str | None:
    """The chat template (text) the profile sets for ``m``'s base model; None: the tokenizer's own."""
    if m.chat_template == "tokenizer":
        return None
    if m.chat_template == "instruct":
        tok = load_tokenizer(m.instruct, trust_remote_code=m.trust_remote_code, revision=m.revision)
        if not tok.chat_template:
            raise ChatTemplateError(f"{cfg.source_file}: model {m.name!r}: chat_template: 'instruct' but the "
                                    f"Instruct model {m.instruct} has no chat template either")
        return tok.chat_template
    return read_chat_template(m.chat_template_file())


def run_chat_template(cfg: ExperimentConfig, run: RunPlan) -> str | None:
    """The chat template a run trains with when it is not its starting point's own: the profile's setting for runs
    that start from the base model (the sandbox base included); None (the template saved with the checkpoint, or
    the Instruct model's own) for every other run."""
    if run.init.startswith("run:") or run.registered:
        return None
    return configured_chat_template(cfg, model_spec(cfg, run.model))


def check_chat_templates(cfg: ExperimentConfig, runs: list[RunPlan] | None = None) -> None:
    """Before any weights load: every base model the runs start from has a chat template, its own or the profile's
    (a :class:`ChatTemplateError` names the model and its ``chat_template`` setting). Loads tokenizers only."""
    seen = set()
    for run in runs if runs is not None else plan_runs(cfg).all():
        if run.model in seen or run.init.startswith("run:") or run.registered:
            continue
        seen.add(run.model)
        m = model_spec(cfg, run.model)
        source = base_model_source(cfg, run.model) if m.base == "sandbox" else m.base
        tok = load_tokenizer(source, trust_remote_code=m.trust_remote_code, revision=m.revision,
                             chat_template=run_chat_template(cfg, run))
        require_chat_template(tok, m.name, m.chat_template, source)


def path_fingerprint(path: Path) -> str:
    """A content hash of a local file, or of every file in a folder (names and contents; dot-files left out).

    Each file's sha256 is computed once per (path, size, mtime): in this process and across processes through
    ``$CFT_HOME/cache/sha256/`` (one small file per key), so planning re-reads a data file only after it changed."""
    files = [path] if path.is_file() else sorted(f for f in path.rglob("*") if f.is_file()
                                                 and not any(part.startswith(".") for part in f.relative_to(path).parts))
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        key = hashlib.sha256(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}".encode()).hexdigest()[:32]
        memo = cft_home() / "cache" / "sha256" / key
        try:
            digest = memo.read_text().strip()
        except OSError:
            digest = ""
        if len(digest) != 64:
            digest = file_sha256(f)
            try:
                write_text(memo, digest)
            except OSError:  # a read-only CFT_HOME: the in-process cache still holds it
                pass
        h.update(f"{f.relative_to(path).as_posix() if f != path else ''}\0{digest}\n".encode())
    return h.hexdigest()[:16]


def hub_dataset_commit(repo_id: str, revision: str | None = None) -> str | None:
    """The commit a hub dataset id (and revision) stands for (:func:`hub_commit` with ``repo_type="dataset"``)."""
    return hub_commit(repo_id, revision, repo_type="dataset")


def data_identity(cfg: ExperimentConfig, key: str) -> dict:
    """What identifies a dataset in run ids: its spec and its content. The sandbox's datasets are identified by the
    world they come from; a local file or folder by a hash of its content (:func:`path_fingerprint`: a file edited
    in place gives new run ids, a copy with the same content the same ones); a hub id by its commit. Nothing is
    loaded: planning stays fast for a million-record set."""
    ds = cfg.datasets[key]
    spec = ds.model_dump()
    if ds.source == "sandbox":
        spec["name"] = spec["name"] or key  # the key names the world's dataset
        spec["world"] = cfg.sandbox.world_spec().world_id()
        return spec
    base = Path(cfg.source_file).parent if cfg.source_file else Path.cwd()
    p = Path(ds.path).expanduser()
    p = p if p.is_absolute() else base / p
    if p.exists():
        spec["content"] = path_fingerprint(p)
    elif ds.path.startswith(("/", ".", "~")):
        spec["content"] = None  # not there yet (mOpenOrca before its build): loading it will say so
    else:
        spec["commit"] = hub_dataset_commit(ds.path, ds.revision)
    return spec


def plan_runs(cfg: ExperimentConfig) -> Plan:
    """Resolve the profile's grid into runs with content-addressed ids (nothing is trained here).

    Every trained Phase 1 and Phase 2 run exists once per training seed (``cfg.training_seeds``; names end in
    ``/s<seed>`` and ids include the seed); a Phase 2 run's parent is the Phase 1 run of the same seed. The Instruct
    model stands for an off-the-shelf model, so it exists once (the sandbox builds it with the profile's ``seed``).
    """
    p1, p2 = [], []
    for mname in cfg.grid.models:
        m = model_spec(cfg, mname)
        base = base_identity(cfg, m)
        init = "sandbox-base" if m.base == "sandbox" else m.base
        instruct = None
        if m.instruct and any(r.phase1 == "Instruct" for r in cfg.grid.phase2):
            if m.instruct == "sandbox":
                resolved = {"phase": 1, "base": base, "data": {"sandbox_instruct": cfg.sandbox.world_spec().world_id(),
                            "mix": cfg.sandbox.instruct_mix}, "hparams": semantic_hparams(cfg.training),
                            "seed": cfg.seed}
                instruct = RunPlan(f"phase1/{mname}/Instruct", 1, mname, "Instruct", None, "none", "instruct",
                                   "sandbox-base", cfg.training, resolved, run_id(resolved, "p1"), seed=cfg.seed)
            else:  # an off-the-shelf Instruct model: registered as a Phase 1 checkpoint without training
                resolved = {"phase": 1, "registered": m.instruct, "revision": m.revision,
                            "identity": model_identity(m.instruct, m.revision)}
                instruct = RunPlan(f"phase1/{mname}/Instruct", 1, mname, "Instruct", None, "none", None, m.instruct,
                                   cfg.training, resolved, run_id(resolved, "p1"))
        for seed in cfg.training_seeds:
            parents: dict[str, RunPlan] = {}
            for key in cfg.grid.phase1:
                resolved = {"phase": 1, "base": base, "data": data_identity(cfg, key),
                            "hparams": semantic_hparams(cfg.training), "seed": seed}
                r = RunPlan(f"phase1/{mname}/{key}/s{seed}", 1, mname, key, None, "none", key, init, cfg.training,
                            resolved, run_id(resolved, "p1"), seed=seed)
                parents[key] = r
                p1.append(r)
            if instruct is not None:
                parents["Instruct"] = instruct
            h2 = cfg.phase2_hparams
            for cell in cfg.grid.phase2:
                parent = parents[cell.phase1]
                resolved = {"phase": 2, "parent": parent.run_id, "data": data_identity(cfg, cell.data),
                            "hparams": semantic_hparams(h2), "seed": seed, "strategy": "none"}
                p2.append(RunPlan(f"phase2/{mname}/{cell.phase1}->{cell.data}/s{seed}", 2, mname, cell.phase1,
                                  cell.data, "none", cell.data, f"run:{parent.run_id}", h2, resolved,
                                  run_id(resolved, "p2"), parent=parent, seed=seed))
        if instruct is not None:
            p1.append(instruct)
    return Plan(p1, p2)


def local_model_dir(path_or_id: str | Path, revision: str | None = None) -> Path:
    """A local folder with the model's safetensors: the folder itself, or the hub snapshot (weights, configs,
    tokenizer files; nothing else is downloaded)."""
    p = Path(str(path_or_id)).expanduser()
    if p.is_dir():
        return p
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path_or_id), revision=revision,
                                  allow_patterns=["*.safetensors", "*.json", "*.jinja", "tokenizer*"]))


def base_model_source(cfg: ExperimentConfig, model_name: str) -> str:
    """The local folder of ``model_name``'s base model: the sandbox's pre-trained model (built if missing), a local
    folder, or the hub model's snapshot. LF_H2, MPD and geometry compare against it."""
    m = model_spec(cfg, model_name)
    if m.base == "sandbox":
        return str(ensure_sandbox(cfg)["base"])
    return str(local_model_dir(m.base, m.revision))


def phase1_model_dir(cfg: ExperimentConfig, run: RunPlan) -> Path:
    """A Phase 1 checkpoint as a local folder (a registered Instruct model is fetched as a hub snapshot)."""
    if run.registered:
        return local_model_dir(run.init, model_spec(cfg, run.model).revision)
    return run.model_dir
