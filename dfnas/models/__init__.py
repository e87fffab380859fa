"""Model registry: a name maps to a builder, every builder takes keyword arguments only.

A teacher file stores ``(name, kwargs)`` so that it can be rebuilt without the code that trained it.
Names of the form ``torchvision:<model>`` build torchvision's classifiers.
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from dfnas.errors import DfnasError
from dfnas.models import resnet
from dfnas.registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("architecture", ", or torchvision:<model>")


def register_model(name: str, builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    return MODELS.register(name, builder)


def model_names() -> list[str]:
    return sorted(MODELS.names())


def build_model(name: str, **kwargs) -> nn.Module:
    if name.startswith("torchvision:"):
        import torchvision

        tv_name = name.split(":", 1)[1]
        try:
            return torchvision.models.get_model(tv_name, weights=None, **kwargs)
        except (ValueError, KeyError) as exc:
            raise DfnasError(f"torchvision has no model {tv_name!r} ({exc})") from None
    builder = MODELS.get(name)
    try:
        return builder(**kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:  # a depth the family lacks, a width of 0, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DfnasError(f"architecture {name!r}: bad arguments {kwargs} ({first[:200]})") from None


register_model("resnet_cifar", resnet.resnet_cifar)
