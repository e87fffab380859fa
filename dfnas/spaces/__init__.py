"""Search spaces behind one registry: an architecture JSON names its space, and the space builds it.

A space registers a `Space` with
    build(arch, in_channels, resolution, num_classes, sizes)  -> the derived network to retrain
    random(seed)                                               -> choices drawn uniformly from the space
where ``arch`` is the architecture JSON (space, space_args, choices, found_by) and ``sizes`` the
retrain-time size keys of that space (``retrain.<space>`` in the config).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dfnas.errors import DfnasError


@dataclass(frozen=True)
class Space:
    name: str
    build: Callable
    random: Callable
    aux_name: str | None = None  # parameters under this name are not counted (an auxiliary head)


_SPACES: dict[str, Space] = {}


def register_space(space: Space) -> Space:
    if space.name in _SPACES:
        raise ValueError(f"space {space.name!r} registered twice")
    _SPACES[space.name] = space
    return space


def get_space(name: str) -> Space:
    if name not in _SPACES:
        raise DfnasError(f"unknown search space {name!r} (known: {', '.join(sorted(_SPACES))})")
    return _SPACES[name]


def build_architecture(arch: dict, in_channels: int, resolution: int, num_classes: int, sizes: dict):
    """The network of an architecture JSON, ready to retrain."""
    for key in ("space", "choices"):
        if key not in arch:
            raise DfnasError(f"architecture JSON lacks the key {key!r}")
    return get_space(arch["space"]).build(arch, in_channels, resolution, num_classes, sizes)


from dfnas.spaces import darts as _darts  # noqa: E402
from dfnas.spaces import shufflenet as _shufflenet  # noqa: E402
from dfnas.spaces import proxyless as _proxyless  # noqa: E402

register_space(Space("darts", _darts.build_from_arch, _darts.random_choices, aux_name="aux_head"))
register_space(Space("spos", _shufflenet.build_from_arch, _shufflenet.random_choices))
register_space(Space("proxyless", _proxyless.build_from_arch, _proxyless.random_choices))
