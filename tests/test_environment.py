"""The environment is pinned once, in two files that agree; the Makefile and CI do what the README says;
the test session itself is offline."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from importlib.metadata import PackageNotFoundError, version

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from cft_utils.paths import PROJECT_ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    from pip._vendor import tomli as tomllib


def _pin(req: str) -> tuple[str, str, frozenset]:
    r = Requirement(req)
    specs = list(r.specifier)
    assert len(specs) == 1 and specs[0].operator == "==", f"{req!r} is not an exact pin"
    return canonicalize_name(r.name), specs[0].version, frozenset(r.extras)


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="module")
def conda_env():
    return yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())


def _pyproject_pins(pp, extras=("dev",)):
    reqs = list(pp["project"]["dependencies"])
    for e in extras:
        reqs += pp["project"]["optional-dependencies"][e]
    pins = [_pin(r) for r in reqs]
    names = [n for n, _, _ in pins]
    assert len(set(names)) == len(names), "a package is listed twice in pyproject.toml"
    return {n: (v, x) for n, v, x in pins}


def _conda_pins(env):
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = [_pin(r) for r in pip if not r.startswith("-e")]
    return {n: (v, x) for n, v, x in pins}


def test_pyproject_and_environment_yml_pin_the_same_versions(pyproject, conda_env):
    pp, ce = _pyproject_pins(pyproject), _conda_pins(conda_env)
    assert set(pp) == set(ce), f"only in pyproject: {set(pp) - set(ce)}; only in environment.yml: {set(ce) - set(pp)}"
    diff = {n: (pp[n], ce[n]) for n in pp if pp[n] != ce[n]}
    assert not diff, f"versions/extras differ: {diff}"


def test_design_card_packages_are_pinned(pyproject):
    pins = _pyproject_pins(pyproject)
    for name in ("jupyterlab", "papermill", "torch", "transformers", "trl", "datasets", "lm-eval",
                 "sentence-transformers", "scikit-learn", "matplotlib", "peft", "accelerate"):
        assert name in pins, name
    assert pins["torch"][0] == "2.13.0"
    assert "pytest" in pins and "ruff" in pins  # the dev extra
    gpu = {_pin(r)[0] for r in pyproject["project"]["optional-dependencies"]["gpu"]}
    assert gpu and not gpu & set(pins), "the gpu extra must not repeat a core package"


def test_environment_yml_python_and_editable_install(pyproject, conda_env):
    deps = conda_env["dependencies"]
    py = next(d for d in deps if isinstance(d, str) and d.startswith("python"))
    pip = next(d["pip"] for d in deps if isinstance(d, dict))
    assert "-e ." in pip
    from packaging.specifiers import SpecifierSet

    assert Version(py.split("=")[-1]) in SpecifierSet(pyproject["project"]["requires-python"])


def test_installed_versions_match_the_pins(pyproject):
    """The environment the tests run in is the pinned one (local labels such as '+cpu' aside)."""
    wrong = {}
    for name, (pinned, _) in _pyproject_pins(pyproject).items():
        try:
            got = version(name)
        except PackageNotFoundError:
            wrong[name] = (pinned, None)
            continue
        if Version(got).public != Version(pinned).public:
            wrong[name] = (pinned, got)
    assert not wrong, f"installed != pinned: {wrong}"


def _make_targets():
    text = (PROJECT_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*)\s*:(?!=)", text, flags=re.M)), text


def test_makefile_has_the_documented_targets():
    targets, text = _make_targets()
    assert {"help", "setup", "reproduce", "test", "lint"} <= targets
    for t in ("setup", "reproduce", "test", "lint"):
        assert re.search(rf"^{t}:.*## ", text, flags=re.M), f"target {t} has no '## ' help text"
    assert re.search(r"^test:.*\bsetup\b", text, flags=re.M), "make test must set up the environment first"
    assert re.search(r"^reproduce:.*\bsetup\b", text, flags=re.M)


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_help_lists_every_target():
    out = subprocess.run(["make", "-s", "help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=30,
                         check=True).stdout
    for t in ("help", "setup", "reproduce", "test", "lint"):
        assert re.search(rf"make {t}\b", out), f"make help does not list {t}:\n{out}"


def test_ci_runs_make_test():
    ci = PROJECT_ROOT / ".ci" / "run"
    assert ci.stat().st_mode & stat.S_IXUSR, ".ci/run is not executable"
    lines = [ln.strip() for ln in ci.read_text().splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert "make test" in lines


def test_test_session_is_offline():
    """conftest.py sets these before transformers/datasets are imported, so nothing reaches the hub."""
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    assert os.environ.get("HF_DATASETS_OFFLINE") == "1"
    import huggingface_hub.constants as c

    assert c.HF_HUB_OFFLINE
