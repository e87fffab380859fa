"""Checkpoints of long training loops: everything needed to continue exactly where a job stopped.

A checkpoint holds the state of every module and optimizer of the loop, the loop's random
generator and torch's global ones (the CPU's, and each GPU's where a single-process job used them),
the history so far and the number of finished epochs, under a
fingerprint of what the loop was started from: its config and seed, and checksums of its inputs
(dataset, soft labels, teacher, the exact architecture). A job that finds a checkpoint with its own
fingerprint resumes from it and, on the CPU, ends with the same result as an uninterrupted job. One
made from other inputs is ignored with a log line that names the inputs that differ; an unreadable
one (a truncated file from a killed job) with a log line too. The job then starts afresh and its
first save replaces the file.

Saves are made at the end of an epoch, at most one per ``DFNAS_CHECKPOINT_SECONDS`` (default 600),
and always after the last epoch: a search on a few thousand synthetic images has epochs of a few
steps, and a save per epoch would write its supernet tens of thousands of times. A killed job loses
at most that interval of work; which epochs were saved never changes a result.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dfnas.errors import DfnasError
from dfnas.runtime import config_hash, save_torch

CHECKPOINT_NAME = "checkpoint.pt"  # a search's checkpoint in its output folder
INTERVAL_ENV = "DFNAS_CHECKPOINT_SECONDS"
DEFAULT_INTERVAL_S = 600.0


def save_interval() -> float:
    """Least seconds between two checkpoint saves of a loop: ``DFNAS_CHECKPOINT_SECONDS`` or 600."""
    raw = os.environ.get(INTERVAL_ENV, "").strip()
    if not raw:
        return DEFAULT_INTERVAL_S
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also NaN
        raise DfnasError(f"{INTERVAL_ENV}={raw!r}: expected a number of seconds >= 0")
    return seconds


@dataclass
class Resumed:
    history: list = field(default_factory=list)
    epoch: int = 0
    extra: dict = field(default_factory=dict)


class Checkpoint:
    """The checkpoint file of one loop. ``fingerprint`` is any JSON-able description of its inputs."""

    def __init__(self, path, fingerprint, log=print):
        self.path = Path(path)
        self.fingerprint = config_hash(fingerprint)
        self.inputs = json.dumps(fingerprint, sort_keys=True, default=str)
        self.log = log
        self.interval = save_interval()
        self._saved_at = time.monotonic()

    def resume(self, stateful: dict, generator: torch.Generator) -> Resumed:
        """Load the checkpoint into ``stateful`` (name -> module or optimizer) and ``generator`` if it
        is this loop's; return the history, the finished epochs and what the loop saved besides."""
        if not self.path.is_file():
            return Resumed()
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a truncated file from a killed job: start afresh
            self.log(f"ignoring unreadable {self.path} ({type(exc).__name__}): starting afresh")
            return Resumed()
        if not isinstance(state, dict) or state.get("fingerprint") != self.fingerprint:
            changed = changed_inputs(self.inputs, state.get("inputs") if isinstance(state, dict) else None)
            self.log(f"ignoring {self.path}: it was made from other inputs ({changed}); starting afresh")
            return Resumed()
        missing = [k for k in (*stateful, "generator", "torch_rng", "history", "epoch") if k not in state]
        if missing:
            self.log(f"ignoring {self.path}: it lacks {', '.join(missing)}; starting afresh")
            return Resumed()
        for name, obj in stateful.items():  # checked before any is loaded: nothing half-loaded
            if isinstance(obj, nn.Module) and _shapes(obj.state_dict()) != _shapes(state[name]):
                self.log(f"ignoring {self.path}: its {name} has other tensors than this one; starting afresh")
                return Resumed()
        for name, obj in stateful.items():
            obj.load_state_dict(state[name])
        generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        cuda_rng = state.get("cuda_rng")
        if cuda_rng is not None and torch.cuda.is_available() and torch.cuda.device_count() == len(cuda_rng) \
                and not _data_parallel():
            torch.cuda.set_rng_state_all(cuda_rng)  # dropout and drop-path masks drawn on the GPUs
        self.log(f"resuming from {self.path} after epoch {state['epoch']}")
        return Resumed(state["history"], state["epoch"], state.get("extra", {}))

    def save(self, stateful: dict, generator: torch.Generator, history: list, epoch: int, final: bool = False,
             **extra) -> bool:
        """Save after epoch ``epoch`` if the interval has passed since the last save (or since the
        loop started), or if ``final``; return whether it saved."""
        if not final and time.monotonic() - self._saved_at < self.interval:
            return False
        # A job that ran on GPUs draws dropout and drop-path masks from their generators too. Of a
        # torchrun job, whose ranks draw on one GPU each, rank 0 (which saves) knows its own alone.
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() and not _data_parallel() else None
        save_torch({"fingerprint": self.fingerprint, "inputs": self.inputs, **{name: obj.state_dict() for name, obj in stateful.items()},
                    "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                    "epoch": epoch, "extra": extra, **({"cuda_rng": cuda_rng} if cuda_rng is not None else {})},
                   self.path)
        self._saved_at = time.monotonic()
        return True

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _data_parallel() -> bool:
    """Whether this process is one rank of several (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1) > 1


def flatten(obj, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: the leaves of a JSON object by dotted name."""
    if not isinstance(obj, dict) or not obj:
        return {prefix: obj}
    out = {}
    for key, value in obj.items():
        out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def changed_inputs(ours: str, theirs) -> str:
    """The dotted names of the inputs in which two fingerprints (JSON text) differ, for a log line."""
    try:
        a, b = flatten(json.loads(ours)), flatten(json.loads(theirs))
    except (TypeError, ValueError):  # a checkpoint saved without its inputs
        return "config, data or seed"
    names = sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))
    shown = ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
    return shown or "config, data or seed"


def _shapes(state_dict) -> dict:
    return {k: tuple(v.shape) for k, v in state_dict.items()} if isinstance(state_dict, dict) else {}
