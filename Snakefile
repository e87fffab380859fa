# dfnas: data-free neural architecture search via recursive label calibration.
#
#   snakemake --cores 2                                   # the embedded default (config.yaml)
#   snakemake --cores 2 --configfile config/smoke.yaml    # another preset
#
# Wiring only: the config is validated here, the rules live in workflow/rules/, and every rule
# runs one small module of the dfnas package (python -m dfnas.<stage>).

import os
import sys

from snakemake.utils import min_version

min_version("8.0")

# This checkout: the folder of this file, also when another workflow uses dfnas as a module (where
# workflow.basedir is the host's).
DFNAS_DIR = str(workflow.current_basedir)
sys.path.insert(0, DFNAS_DIR)  # the dfnas package of this checkout, installed or not
from dfnas.config import read_config_file, validate_config  # noqa: E402
from dfnas.errors import DfnasError  # noqa: E402

# The embedded default (config.yaml beside this file) is the config only when no --configfile is
# given: a preset stands alone (schema defaults below it), and means the same from any directory.
# As a module, the host's `config:` is the config (Snakemake skips this file then).
if not workflow.overwrite_configfiles:
    workflow.configfile(os.path.join(DFNAS_DIR, "config.yaml"))


report: "workflow/report/workflow.rst"


try:
    # Snakemake's own reading of a --configfile lets a key given twice pass (the last wins).
    for path in workflow.overwrite_configfiles:
        read_config_file(path)
    validate_config(config)
except DfnasError as exc:
    raise WorkflowError(str(exc)) from None


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/teacher.smk"
include: "workflow/rules/synthesis.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/fidelity.smk"
include: "workflow/rules/report.smk"


rule all:
    default_target: True
    input:
        L.teacher_eval(),
        [L.soft_labels(v) for v in VARIANTS],
        [L.quality(v) for v in VARIANTS],
        [L.metrics(*arm) for arm in ARMS],
        [L.student(*student) for student in STUDENTS],
        [L.ranking(source, seed) for source, seed in RANKED],
        [L.supernet_test(*arm) for arm in SUPERNET_TESTED],
        rules.report.output.summary,
