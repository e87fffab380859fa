"""The cluster profiles, read as the SLURM executor plugin reads them: every rule's resources pass the
installed plugin's own checks, the documented options become the sbatch flags they promise, and every
rule that may ask for a GPU is sized in the GPU profile."""

import re
from types import SimpleNamespace

import pytest
import yaml
from snakemake_interface_common.exceptions import WorkflowError

from conftest import REPO

pytest.importorskip("snakemake_executor_plugin_slurm", reason="the `slurm` extra is not installed (make setup)")
from snakemake_executor_plugin_slurm.utils import set_gres_string  # noqa: E402
from snakemake_executor_plugin_slurm.validation import validate_slurm_extra  # noqa: E402

PROFILES = REPO / "workflow" / "profiles"
RULE_FILES = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]


def rule_blocks() -> dict[str, str]:
    """rule name -> the text of its block, from the workflow files."""
    blocks = {}
    for path in RULE_FILES:
        parts = re.split(r"^rule (\w+):\n", path.read_text(), flags=re.M)
        blocks.update(zip(parts[1::2], (re.split(r"^\S", body, maxsplit=1, flags=re.M)[0] for body in parts[2::2])))
    return blocks


RULES = rule_blocks()
# Rules whose GPU count is the config's (retrain.gpus, search.spos.gpus: several make a torchrun job);
# the GPU profile leaves it to them.
CONFIG_SIZED = {name for name, body in RULES.items()
                if re.search(r"^\s+gpu=(RETRAIN_GPUS|search_gpus),", body, flags=re.M)}
GPU_RULES = sorted(CONFIG_SIZED | {name for name, body in RULES.items() if re.search(r"^\s+gpu=GPU\b", body, flags=re.M)})


def profile(name: str, documented: bool = False) -> dict:
    """The profile's config; with ``documented``, its commented-out options switched on."""
    text = (PROFILES / name / "config.yaml").read_text()
    if documented:
        keys = "slurm_partition|slurm_account|gpu_model|constraint|slurm_extra"
        text = re.sub(rf"^(\s*)# ({keys}):", r"\1\2:", text, flags=re.M)
    return yaml.safe_load(text)


class Resources(dict):
    """A job's resources as the plugin reads them: .get() and attribute access."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


def job(cfg: dict, rule: str) -> SimpleNamespace:
    return SimpleNamespace(resources=Resources({**cfg["default-resources"], **cfg.get("set-resources", {}).get(rule, {})}))


def test_the_workflow_rules_are_found():
    assert {"data", "teacher", "synthesize", "search", "retrain", "report", "fidelity_truth"} <= set(RULES)
    assert {"teacher", "synthesize", "search", "retrain", "fidelity_proxy", "fidelity_truth"} <= set(GPU_RULES)
    assert "report" not in GPU_RULES and "data" not in GPU_RULES


@pytest.mark.parametrize("documented", [False, True], ids=["as shipped", "documented options on"])
@pytest.mark.parametrize("name", ["slurm", "slurm-local"])
def test_every_rule_passes_the_plugins_checks(name, documented):
    cfg = profile(name, documented)
    assert set(cfg.get("set-resources", {})) <= set(RULES), "a profile sizes a rule the workflow does not have"
    for rule in RULES:
        validate_slurm_extra(job(cfg, rule))
        gres = set_gres_string(job(cfg, rule))
        wants_gpu = bool(cfg.get("set-resources", {}).get(rule, {}).get("gpu"))
        assert ("--gpus=" in gres) == wants_gpu, (rule, gres)
        if wants_gpu:
            assert gres == (" --gpus=a100:1" if documented and rule == "teacher" else " --gpus=1"), (rule, gres)
    if documented and name == "slurm":
        assert job(cfg, "teacher").resources.constraint == "ib"


def test_every_gpu_rule_is_decided_in_the_gpu_profile_and_off_in_the_cpu_one():
    """A rule that asks for a GPU (unless device is cpu) gets one, or an explicit 0, in the GPU profile:
    the training stages one, teacher-inference stages none; the CPU-only test cluster none at all."""
    gpu, local = profile("slurm")["set-resources"], profile("slurm-local")["set-resources"]
    inference = {"soft_labels", "natural_reference", "teacher_eval", "synthesis_quality"}
    assert CONFIG_SIZED == {"retrain", "fidelity_truth", "search"}
    assert {rule: gpu[rule].get("gpu") for rule in GPU_RULES} == {
        rule: None if rule in CONFIG_SIZED else int(rule not in inference) for rule in GPU_RULES}
    assert {rule: local[rule]["gpu"] for rule in GPU_RULES} == dict.fromkeys(GPU_RULES, 0)


def test_a_constraint_in_slurm_extra_is_what_the_plugin_refuses():
    """Why the profile and the README use `constraint`: the plugin sets -C itself."""
    bad = SimpleNamespace(resources=Resources(slurm_extra="'--constraint=a100'"))
    with pytest.raises(WorkflowError, match="node-constraints option is not allowed"):
        validate_slurm_extra(bad)
