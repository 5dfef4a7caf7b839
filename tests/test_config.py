"""Parameter files and accelerate configs: every shipped one parses; bad ones fail with a message that
names the file and the key."""

from __future__ import annotations

import copy

import pytest
import yaml

from cft_utils.config import ConfigError, ExperimentConfig, load_config
from cft_utils.paths import ACCELERATE_CONFIGS_DIR, PARAMS_DIR
from cft_utils.plan import plan_runs

SHIPPED = sorted(PARAMS_DIR.glob("*.yaml"))
ACCEL = sorted(ACCELERATE_CONFIGS_DIR.glob("*.yaml"))


def test_the_three_profiles_are_shipped():
    assert {"smoke", "sandbox", "paper"} <= {p.stem for p in SHIPPED}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.stem)
def test_every_shipped_parameter_file_loads_and_plans(path):
    cfg = load_config(path)
    assert isinstance(cfg, ExperimentConfig)
    assert cfg.profile == path.stem
    assert cfg.source_file == str(path)
    h = cfg.training
    assert h.per_device_batch_size * h.gradient_accumulation_steps * h.num_processes == h.global_batch_size
    assert h.save_steps % h.logging_steps == 0
    plan = plan_runs(cfg)  # resolves the grid without compute
    n_models, n_seeds = len(cfg.grid.models), len(cfg.training_seeds)
    uses_instruct = any(c.phase1 == "Instruct" for c in cfg.grid.phase2)
    # every trained run once per training seed; an Instruct model exists once
    assert len(plan.phase1) == n_models * (len(cfg.grid.phase1) * n_seeds + uses_instruct)
    assert len(plan.phase2) == n_models * len(cfg.grid.phase2) * n_seeds
    ids = [r.run_id for r in plan.all()]
    assert len(set(ids)) == len(ids)


def test_profile_name_and_path_are_the_same_config():
    by_name = load_config("smoke")
    by_path = load_config(PARAMS_DIR / "smoke.yaml")
    assert by_name.model_dump() == by_path.model_dump()
    assert load_config().profile == "sandbox"  # the default profile


def test_paper_profile_has_table_a1_hyperparameters_and_the_paper_grid():
    cfg = load_config("paper")
    h = cfg.training
    assert (h.epochs, h.global_batch_size, h.lr_scheduler, h.warmup_steps, h.weight_decay) == (4, 16, "cosine", 10, 0)
    assert h.optim.startswith("adamw") and h.learning_rate == 2e-5 and h.precision in {"auto", "bf16"}
    assert [m.name for m in cfg.models] == ["Mistral-7B", "LLaMA-3-8B"]
    assert all(m.instruct for m in cfg.models)
    assert cfg.datasets["alpaca"].source == "alpaca" and cfg.datasets["openorca"].source == "openorca"
    assert cfg.datasets["multialpaca"].source == "multialpaca" and cfg.datasets["mopenorca"].source == "mopenorca"
    assert cfg.grid.phase1 == ["alpaca", "openorca"]
    assert {(c.phase1, c.data) for c in cfg.grid.phase2} == {
        ("alpaca", "multialpaca"), ("Instruct", "multialpaca"), ("openorca", "mopenorca"), ("Instruct", "mopenorca")}
    plan = plan_runs(cfg)
    instruct = [r for r in plan.phase1 if r.phase1_data == "Instruct"]
    # off-the-shelf Instruct models are registered as Phase 1 checkpoints, not trained
    assert len(instruct) == 2 and all(r.data_key is None and r.done() for r in instruct)
    assert {str(r.model_dir) for r in instruct} == {m.instruct for m in cfg.models}


def test_overrides_are_applied_and_validated():
    cfg = load_config("smoke", {"training.epochs": 3, "training.learning_rate": 5e-4})
    assert cfg.training.epochs == 3 and cfg.training.learning_rate == 5e-4
    with pytest.raises(ConfigError) as e:
        load_config("smoke", {"training.epochs": 0})
    assert "smoke.yaml" in str(e.value) and "training.epochs" in str(e.value)


# --------------------------------------------------------------------------------------------- accelerate

ACCELERATE_KEYS = {"compute_environment", "distributed_type", "num_machines", "num_processes", "mixed_precision"}


@pytest.mark.parametrize("path", ACCEL, ids=lambda p: p.stem)
def test_accelerate_configs_parse_with_the_keys_accelerate_needs(path):
    raw = yaml.safe_load(path.read_text())
    assert isinstance(raw, dict) and ACCELERATE_KEYS <= set(raw), f"{path}: missing {ACCELERATE_KEYS - set(raw)}"
    assert isinstance(raw["num_processes"], int) and raw["num_processes"] >= 1
    from accelerate.commands.config.config_args import load_config_from_file

    parsed = load_config_from_file(str(path))  # accelerate's own loader rejects unknown keys and bad enums
    assert parsed.num_processes == raw["num_processes"]


def test_accelerate_configs_cover_ddp_fsdp_deepspeed_and_cpu():
    kinds = {p.stem: yaml.safe_load(p.read_text()) for p in ACCEL}
    types = {v["distributed_type"] for v in kinds.values()}
    assert {"MULTI_GPU", "FSDP", "DEEPSPEED"} <= types
    assert kinds["cpu_ddp"]["num_processes"] == 2
    stages = sorted(v["deepspeed_config"]["zero_stage"] for v in kinds.values() if v["distributed_type"] == "DEEPSPEED")
    assert stages == [2, 3]
    assert "fsdp_config" in next(v for v in kinds.values() if v["distributed_type"] == "FSDP")


# --------------------------------------------------------------------------------------------- bad input

VALID = {
    "profile": "t",
    "seed": 1,
    "models": [{"name": "m", "base": "org/base", "instruct": "org/instruct"}],
    "datasets": {"a": {"source": "jsonl", "path": "org/a"}, "b": {"source": "jsonl", "path": "org/b"}},
    "grid": {"models": ["m"], "phase1": ["a"], "phase2": [{"phase1": "a", "data": "b"}]},
    "training": {"global_batch_size": 4, "per_device_batch_size": 2, "gradient_accumulation_steps": 2,
                 "num_processes": 1, "logging_steps": 2, "save_steps": 4},
}


def _set(path: str, value):
    def edit(d):
        *parents, leaf = path.split(".")
        node = d
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
        node[leaf] = value
    return edit


def _drop(path: str):
    def edit(d):
        *parents, leaf = path.split(".")
        node = d
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        del node[leaf]
    return edit


# (case id, edit of VALID, substrings the error must contain besides the file name)
BAD = [
    ("unknown-top-level-key", _set("trainig", {"epochs": 1}), ["trainig", "Extra inputs"]),
    ("unknown-nested-key", _set("training.lr", 0.1), ["training.lr"]),
    ("wrong-type", _set("training.epochs", "four"), ["training.epochs"]),
    ("wrong-type-list", _set("grid.phase1", "a"), ["grid.phase1"]),
    ("negative-lr", _set("training.learning_rate", -1e-5), ["training.learning_rate"]),
    ("global-batch-mismatch", _set("training.global_batch_size", 16), ["training", "global_batch_size 16"]),
    ("save-not-multiple-of-logging", _set("training.save_steps", 5), ["training", "save_steps (5)"]),
    ("unknown-source", _set("datasets.a.source", "csv"), ["datasets.a.source"]),
    ("source-without-path", _drop("datasets.a.path"), ["datasets.a", "needs a 'path'"]),
    ("unknown-model-in-grid", _set("grid.models", ["nope"]), ["grid.models", "'nope'"]),
    ("unknown-dataset-in-grid", _set("grid.phase1", ["zzz"]), ["grid.phase1", "'zzz'"]),
    ("unknown-dataset-in-phase2", _set("grid.phase2", [{"phase1": "a", "data": "zzz"}]),
     ["grid.phase2.0.data", "'zzz'"]),
    ("phase2-parent-not-in-grid", _set("grid.phase2", [{"phase1": "b", "data": "b"}]),
     ["grid.phase2.0.phase1", "'b'"]),
    ("instruct-without-instruct-model",
     lambda d: (_set("models.0.instruct", None)(d), _set("grid.phase2", [{"phase1": "Instruct", "data": "b"}])(d)),
     ["grid.phase2.0.phase1", "'Instruct'", "no 'instruct'"]),
    ("duplicate-model-names", lambda d: d["models"].append(dict(d["models"][0])), ["models", "duplicate"]),
    ("sandbox-without-section", _set("models.0.base", "sandbox"), ["sandbox", "no 'sandbox' section"]),
    ("unknown-sandbox-language", _set("sandbox", {"languages": ["en", "xx"]}), ["sandbox.languages", "xx"]),
    ("sandbox-without-english", _set("sandbox", {"languages": ["qaa", "qab"]}), ["sandbox.languages", "'en'"]),
    ("instruct-mix-not-one", _set("sandbox", {"instruct_mix": {"A": 0.5, "B": 0.2, "C": 0.2}}),
     ["sandbox.instruct_mix", "sum to 1"]),
    ("heads-do-not-divide", _set("sandbox", {"model": {"hidden_size": 30, "num_heads": 4}}),
     ["sandbox.model", "not divisible"]),
    ("missing-local-data-file", _set("datasets.a.path", "./no_such_file.jsonl"),
     ["datasets.a.path", "no_such_file.jsonl"]),
    ("missing-local-model-dir", _set("models.0.base", "./no_such_model"), ["models.0.base", "no_such_model"]),
]


@pytest.mark.bad_input()  # each case is a row of docs/bad_inputs.md
@pytest.mark.parametrize("case_id,edit,needles", BAD, ids=[b[0] for b in BAD])
def test_bad_parameter_file_names_file_and_key(tmp_path, case_id, edit, needles):
    raw = copy.deepcopy(VALID)
    edit(raw)
    f = tmp_path / f"{case_id}.yaml"
    f.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert str(f) in msg
    for n in needles:
        assert n in msg, f"{n!r} not in error message:\n{msg}"


def test_valid_base_config_loads(tmp_path):
    """The table above edits this config: it must itself be valid, or the table would prove nothing."""
    f = tmp_path / "ok.yaml"
    f.write_text(yaml.safe_dump(VALID))
    cfg = load_config(f)
    assert cfg.grid.phase2[0].data == "b"


def test_local_data_path_is_resolved_relative_to_the_parameter_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.jsonl").write_text("")
    raw = copy.deepcopy(VALID)
    raw["datasets"]["a"]["path"] = "./data/a.jsonl"
    f = tmp_path / "rel.yaml"
    f.write_text(yaml.safe_dump(raw))
    assert load_config(f).datasets["a"].path == "./data/a.jsonl"


def test_mopenorca_may_be_missing_at_config_time(tmp_path):
    """mOpenOrca is built by the project later in the pipeline: its absence must not block loading."""
    raw = copy.deepcopy(VALID)
    raw["datasets"]["b"] = {"source": "mopenorca", "path": "./not_built_yet"}
    f = tmp_path / "mo.yaml"
    f.write_text(yaml.safe_dump(raw))
    assert load_config(f).datasets["b"].source == "mopenorca"


@pytest.mark.parametrize("content,needle", [
    ("profile: [unclosed\n  models: :", "not valid YAML"),
    ("- just\n- a list\n", "expected a mapping at the top level, got list"),
    ("", "expected a mapping at the top level, got NoneType"),
], ids=["invalid-yaml", "list-top-level", "empty-file"])
@pytest.mark.bad_input("parameter-file")
def test_unparseable_parameter_file(tmp_path, content, needle):
    f = tmp_path / "bad.yaml"
    f.write_text(content)
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(f) in str(e.value) and needle in str(e.value)


@pytest.mark.bad_input("parameter-file-missing")
def test_missing_parameter_file_lists_the_profiles(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config("no_such_profile")
    assert "no_such_profile.yaml" in str(e.value) and "no such parameter file" in str(e.value)
    assert "smoke" in str(e.value) and "sandbox" in str(e.value)
    with pytest.raises(ConfigError, match="no such parameter file"):
        load_config(tmp_path / "absent.yaml")


@pytest.mark.bad_input("parameter-file-several-errors")
def test_all_errors_of_a_file_are_reported_at_once(tmp_path):
    raw = copy.deepcopy(VALID)
    raw["training"]["epochs"] = -1
    raw["training"]["warmup_steps"] = -3
    f = tmp_path / "two.yaml"
    f.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert "training.epochs" in str(e.value) and "training.warmup_steps" in str(e.value)


def test_other_sft_arguments_pass_to_trl_and_unknown_ones_are_refused(tmp_path):
    """`training.trl` reaches TRL's SFTConfig as it is (TRL's own parser builds the config); a name SFTConfig does
    not have is an error naming the key when the file loads."""
    from cft_utils.train import sft_config

    cfg = load_config("smoke", {"training.trl": {"max_grad_norm": 0.5, "neftune_noise_alpha": 5}})
    args = sft_config(cfg.training, tmp_path, seed=7)
    assert args.max_grad_norm == 0.5 and args.neftune_noise_alpha == 5
    assert args.num_train_epochs == cfg.training.epochs and args.activation_checkpointing is False
    with pytest.raises(ConfigError, match=r"training.trl: .*\['max_grad_nrom'\] are not arguments of TRL's SFTConfig"):
        load_config("smoke", {"training.trl": {"max_grad_nrom": 0.5}})
