"""Declared dependencies against used ones: pyproject.toml lists exactly the third-party packages that
dfnas and its workflow import, and the conda environment of the rules (envs/dfnas.yaml) lists the same
packages with the same lower bounds."""

import ast
import re
import sys
from importlib.metadata import packages_distributions

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

tomllib = pytest.importorskip("tomllib")

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
DECLARED = {canonicalize_name(Requirement(r).name): Requirement(r) for r in PYPROJECT["project"]["dependencies"]}
# PyPI name -> conda-forge name, where they differ (matplotlib-base: matplotlib without a GUI toolkit).
CONDA_NAMES = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
# In the conda environment but not runtime dependencies of dfnas: the interpreter, and the tools of the
# post-deploy script's editable install.
CONDA_ONLY = {"python", "pip", "setuptools"}


def third_party(modules: set[str]) -> set[str]:
    return {m for m in modules if m not in sys.stdlib_module_names and m != "dfnas"}


def package_imports() -> set[str]:
    """Top-level modules imported anywhere in dfnas/ (function-level imports included)."""
    found = set()
    for path in (REPO / "dfnas").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                found |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                found.add(node.module.split(".")[0])
    return third_party(found)


def workflow_imports() -> set[str]:
    """Top-level modules the Snakefile and the rule files import (Snakemake syntax: read line by line)."""
    found = set()
    for path in [REPO / "Snakefile", *(REPO / "workflow" / "rules").glob("*.smk")]:
        found |= set(re.findall(r"^(?:from|import)\s+([A-Za-z_]\w*)", path.read_text(), re.MULTILINE))
    return third_party(found)


def distributions(modules: set[str]) -> set[str]:
    owners = packages_distributions()
    missing = sorted(m for m in modules if m not in owners)
    assert not missing, f"imported but not installed here: {missing}"
    return {canonicalize_name(owners[m][0]) for m in modules}


def test_pyproject_declares_exactly_what_is_imported():
    used_by_package = distributions(package_imports())
    # The scan sees every kind of import: top-level, `from x.y import`, and the renamed distributions.
    assert {"torch", "numpy", "pillow", "pyyaml", "h5py"} <= used_by_package
    used = used_by_package | distributions(workflow_imports())
    assert "snakemake" in used  # the Snakefile's min_version, the rules' deployment settings
    assert used == set(DECLARED), (f"imported, not declared: {sorted(used - set(DECLARED))}; "
                                   f"declared, never imported: {sorted(set(DECLARED) - used)}")


def conda_dependencies() -> dict[str, str]:
    env = yaml.safe_load((REPO / "envs" / "dfnas.yaml").read_text())
    assert env["channels"] == ["conda-forge", "nodefaults"]
    specs = {}
    for line in env["dependencies"]:
        assert isinstance(line, str), f"envs/dfnas.yaml: no pip section expected, found {line}"
        name, _, spec = line.partition(" ")
        specs[name] = spec.strip()
    return specs


def test_the_conda_environment_mirrors_pyproject():
    conda = conda_dependencies()
    # Snakemake runs the workflow; the jobs inside the environment never import it.
    runtime = {name: req for name, req in DECLARED.items() if name != "snakemake"}
    expected = {CONDA_NAMES.get(name, name) for name in runtime} | CONDA_ONLY
    assert set(conda) == expected, (sorted(set(conda) - expected), sorted(expected - set(conda)))
    for name, req in runtime.items():
        assert conda[CONDA_NAMES.get(name, name)] == str(req.specifier), name
    # The interpreter: the same lower bound as requires-python.
    python_floor = PYPROJECT["project"]["requires-python"]
    assert conda["python"].split(",")[0] == python_floor
    # What the editable install of the post-deploy script builds with.
    assert conda["setuptools"] == PYPROJECT["build-system"]["requires"][0].removeprefix("setuptools")
