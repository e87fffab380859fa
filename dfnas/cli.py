"""Command-line plumbing shared by every stage: one argument shape, one-line errors.

Every ``python -m dfnas.<stage>`` takes ``--config FILE`` (what a person passes) or
``--config-json TEXT`` (what a Snakemake rule passes: only the sections the stage reads), and,
where it trains or runs a network, ``--threads``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import sys
from pathlib import Path

from dfnas.config import load_config
from dfnas.errors import DfnasError, access_failure, failed_write_path, unwritable, write_failure
from dfnas.runtime import check_writable, peak_rss_kib, set_threads


# When set, every stage appends one JSON line to this file as it ends: its command line and its
# peak resident memory (benchmarks/memory_scale.py reads them).
PEAK_MEMORY_ENV = "DFNAS_PEAK_MEMORY_LOG"


def cli_main(func):
    """Wrap a ``main(argv=None)`` so that a `DfnasError` becomes ``dfnas: error: <message>`` and exit 2."""

    @functools.wraps(func)
    def wrapper(argv=None):
        try:
            return func(argv)
        except DfnasError as exc:
            print(f"dfnas: error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        except (OSError, RuntimeError) as exc:
            # A full disk or a file system made read-only mid-run (outputs are written atomically, so
            # nothing half-written is left), or a file this user may not open: one line naming it.
            path = failed_write_path(exc)
            if write_failure(exc):
                message = str(unwritable(path or "an output file", exc))
            elif isinstance(exc, PermissionError) and path:
                message = f"{path}: {access_failure(exc)}"
            else:
                raise
            print(f"dfnas: error: {message}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            if os.environ.get(PEAK_MEMORY_ENV):
                module = func.__module__
                if module == "__main__":  # python -m dfnas.<stage>
                    module = "dfnas." + os.path.splitext(os.path.basename(sys.argv[0]))[0]
                record_peak_memory(os.environ[PEAK_MEMORY_ENV], module, sys.argv[1:] if argv is None else argv)

    return wrapper


def record_peak_memory(path, module: str, argv) -> None:
    """Append ``{"module", "argv", "max_rss_kb", "workers_max_rss_kb"}`` to ``path``: the peak of this
    process and of its largest finished child (a DataLoader worker, which starts with this
    process's memory), in KiB."""
    row = {"module": module, "argv": [str(a) for a in argv], "max_rss_kb": peak_rss_kib(),
           "workers_max_rss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def stage_parser(module: str, doc: str, teacher: str | None = None, threads: bool = True,
                 epilog: str | None = None) -> argparse.ArgumentParser:
    """The parser of ``python -m dfnas.<module>``, with the arguments every stage shares."""
    parser = argparse.ArgumentParser(prog=f"python -m dfnas.{module}", description=doc.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=epilog)
    parser.add_argument("--config", help="config YAML/JSON file (validated; defaults filled)")
    parser.add_argument("--config-json", help="config as a JSON string (what the Snakemake rules pass)")
    if teacher:
        parser.add_argument("--teacher", required=True, help=teacher)
    if threads:
        parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: config threads)")
    return parser


# The arguments that name a stage's outputs: a file (its folder must be writable) or a folder.
OUTPUT_FILES, OUTPUT_FOLDERS = ("out", "grid", "write_reference", "latency_table"), ("out_dir",)


def stage_config(args) -> dict:
    """The validated config of a parsed command line; sets the thread count when the stage has one.
    Checks first that the stage can write its outputs, so that no long job learns it at its end."""
    cfg = load_config(args.config, args.config_json)
    check_outputs_are_not_inputs(args)
    for name in OUTPUT_FILES + OUTPUT_FOLDERS:
        value = getattr(args, name, None)
        if value:
            check_writable(Path(value) if name in OUTPUT_FOLDERS else Path(value).parent)
    if hasattr(args, "threads"):  # a job's threads, shared by the processes torchrun starts on this node
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        set_threads(max(1, (args.threads or cfg["threads"]) // max(1, ranks)))
    return cfg


def check_outputs_are_not_inputs(args) -> None:
    """Refuse an output file that is also one of the stage's input files (``--out`` the same as
    ``--dataset``, say): writing it would destroy the input."""
    inputs = {}
    for name, value in vars(args).items():
        if name in OUTPUT_FILES + OUTPUT_FOLDERS or name in ("config", "config_json"):
            continue
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str) and item:
                path = Path(item.removeprefix("file:"))  # a teacher source names its file so
                try:
                    if path.is_file():
                        inputs.setdefault(path.resolve(), (name, item))
                except OSError:  # not a path (a name too long for one, say)
                    continue
    for name in OUTPUT_FILES:
        value = getattr(args, name, None)
        if value and Path(value).resolve() in inputs:
            source, given = inputs[Path(value).resolve()]
            raise DfnasError(f"--{name.replace('_', '-')} {value} is also the input --{source.replace('_', '-')} "
                             f"{given}; writing it would destroy that input: name another output")
