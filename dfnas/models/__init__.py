"""Model registry: a name maps to a builder, every builder takes keyword arguments only.

A teacher file stores ``(name, kwargs)`` so that it can be rebuilt without the code that trained it.
Names of the form ``torchvision:<model>`` build torchvision's classifiers.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from dfnas.errors import DfnasError

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(fn):
        if name in _BUILDERS:
            raise ValueError(f"model {name!r} registered twice")
        _BUILDERS[name] = fn
        return fn

    return deco


def model_names() -> list[str]:
    return sorted(_BUILDERS)


def build_model(name: str, **kwargs) -> nn.Module:
    if name.startswith("torchvision:"):
        import torchvision

        tv_name = name.split(":", 1)[1]
        try:
            return torchvision.models.get_model(tv_name, weights=None, **kwargs)
        except (ValueError, KeyError) as exc:
            raise DfnasError(f"torchvision has no model {tv_name!r} ({exc})") from None
    if name not in _BUILDERS:
        raise DfnasError(f"unknown architecture {name!r} (known: {', '.join(model_names())}, or torchvision:<model>)")
    try:
        return _BUILDERS[name](**kwargs)
    except TypeError as exc:
        raise DfnasError(f"architecture {name!r}: bad arguments {kwargs} ({exc})") from None


from dfnas.models import resnet  # noqa: E402,F401  (registers its builders)
