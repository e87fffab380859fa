"""Search spaces behind one registry: an architecture JSON names its space, and the space builds it.

A `Space` carries everything the stages need of a space, so that none of them asks which one it has:

    build(arch, in_channels, resolution, num_classes, sizes)  the derived network to retrain
    random(space_config, seed, input_shape, num_classes)      the random baseline: ``space_args``,
                                                              ``choices`` and what ``found_by`` records,
                                                              drawn under the space's FLOPs bound
    plot(choices, path)                                       the architecture as a PNG
    config_keys                                               the keys of ``search.<space>`` that
                                                              define the space (all a random draw reads)

``arch`` is the architecture JSON (space, space_args, choices, found_by) and ``sizes`` the
retrain-time size keys of that space (``retrain.<space>`` in the config, less the recipe keys it
may override: `retrain_sizes`). A new space is one module and one `register_space` line below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dfnas.errors import DfnasError
from dfnas.registry import Registry
from dfnas.runtime import read_json
from dfnas.spaces import darts as _darts
from dfnas.spaces import proxyless as _proxyless
from dfnas.spaces import shufflenet as _shufflenet


@dataclass(frozen=True)
class Space:
    name: str
    build: Callable
    random: Callable
    plot: Callable
    config_keys: tuple[str, ...]
    aux_name: str | None = None  # parameters under this name are not counted (an auxiliary head)


SPACES: Registry[Space] = Registry("search space")


def register_space(space: Space) -> Space:
    return SPACES.register(space.name, space)


def get_space(name: str) -> Space:
    return SPACES.get(name)


def space_names() -> list[str]:
    return SPACES.names()


def read_architecture(path, needed_by: str = "this stage") -> dict:
    """An architecture JSON (a search's, a random baseline's, a fidelity draw's), or one line naming the file."""
    arch = read_json(path, needed_by, "write one with python -m dfnas.search",
                     remedy="fix it if you edited it, else delete it and rerun to remake it")
    if not isinstance(arch, dict) or "space" not in arch or "choices" not in arch:
        raise DfnasError(f"{path}: not an architecture JSON (needs 'space' and 'choices')")
    return arch


# Keys of ``retrain.<space>`` that override the shared retrain recipe for that space's networks
# (null keeps the shared value) rather than size the network.
RECIPE_OVERRIDES = ("epochs", "no_decay", "schedule")


def retrain_sizes(retrain: dict, space: str) -> dict:
    """The network sizes in ``retrain.<space>`` (the config's ``retrain`` section given)."""
    return {k: v for k, v in retrain.get(space, {}).items() if k not in RECIPE_OVERRIDES}


def retrain_recipe(retrain: dict, space: str) -> dict:
    """The shared ``retrain`` recipe with the overrides of ``retrain.<space>`` applied."""
    own = retrain.get(space, {})
    return {**retrain, **{k: own[k] for k in RECIPE_OVERRIDES if own.get(k) is not None}}


def build_architecture(arch: dict, in_channels: int, resolution: int, num_classes: int, sizes: dict):
    """The network of an architecture JSON, ready to retrain."""
    for key in ("space", "choices"):
        if key not in arch:
            raise DfnasError(f"architecture JSON lacks the key {key!r}")
    return get_space(arch["space"]).build(arch, in_channels, resolution, num_classes, sizes)


register_space(Space("darts", _darts.build_from_arch, _darts.random_architecture, _darts.plot_choices,
                     ("steps", "multiplier"), aux_name="aux_head"))
register_space(Space("spos", _shufflenet.build_from_arch, _shufflenet.random_architecture, _shufflenet.plot_choices,
                     _shufflenet.NETWORK_KEYS + ("flops_bound",)))
register_space(Space("proxyless", _proxyless.build_from_arch, _proxyless.random_architecture,
                     _proxyless.plot_choices, _proxyless.NETWORK_KEYS + ("hardware", "random_tolerance")))
