"""What a search strategy returns, and the trained search network as the search stage keeps it
(the SPOS ranking check reads it back)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from dfnas.errors import DfnasError, damaged
from dfnas.runtime import config_hash, save_torch


@dataclass
class SearchResult:
    space_args: dict  # what the architecture JSON records to rebuild the found network
    choices: dict  # the architecture
    history: list[dict]  # one row per epoch (and per generation, for an evolution)
    network: nn.Module  # the trained search network or supernet
    search_args: dict  # what rebuilds the search network
    found_by: dict = field(default_factory=dict)  # what the strategy adds to the architecture's found_by


def search_config_hash(scfg: dict, source: str, seed: int) -> str:
    """The ``config_hash`` of a search's ``found_by``: its algorithm's keys, source and seed."""
    return config_hash({"search": scfg, "source": source, "seed": seed})


def save_search_network(path: Path, network: nn.Module, arch: dict, search_args: dict) -> None:
    """The trained search network's weights (CPU, contiguous) with what rebuilds it."""
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    save_torch({"space": arch["space"], "space_args": arch["space_args"], "search_args": search_args, "found_by": {
        k: arch["found_by"][k] for k in ("algorithm", "source", "seed", "config_hash")}, "state_dict": state}, path)


def load_search_network(path) -> dict:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise DfnasError(f"search network {path} does not exist") from None
    except Exception as exc:  # noqa: BLE001 - truncated or foreign files
        raise damaged(path, "not a readable search network", exc) from None
    if not isinstance(state, dict) or not {"space", "search_args", "state_dict"} <= set(state):
        raise DfnasError(f"{path}: not a dfnas search network (write one with python -m dfnas.search)")
    return state


