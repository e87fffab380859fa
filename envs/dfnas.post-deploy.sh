#!/usr/bin/env bash
# Run by Snakemake once, inside the environment of envs/dfnas.yaml, right after conda created it
# (--use-conda): installs dfnas itself, editable, from the checkout whose Snakefile created the
# environment (DFNAS_DIR, set by workflow/rules/common.smk). An activated environment then imports
# dfnas and has the dfnas-* commands. Its dependencies all come from envs/dfnas.yaml: none is
# installed here.
set -euo pipefail
if [ -z "${DFNAS_DIR:-}" ] || [ ! -f "$DFNAS_DIR/pyproject.toml" ]; then
    echo "dfnas post-deploy: DFNAS_DIR='${DFNAS_DIR:-}' is not a dfnas checkout; create this environment through the dfnas Snakefile (snakemake --use-conda)" >&2
    exit 1
fi
python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation --editable "$DFNAS_DIR"
