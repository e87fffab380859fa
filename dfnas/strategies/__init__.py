"""Search strategies behind one registry, apart from the spaces they search and the data they see.

A `Strategy` is a whole NAS algorithm with one signature:

    search(cfg, data, seed, out_dir, device, log) -> dfnas.search_result.SearchResult

``cfg`` is the validated config (the strategy reads ``search.<name>``), ``data`` a
`dfnas.search_data.SearchData` (natural or synthetic, the strategy does not ask which), ``out_dir``
where it keeps its checkpoint; the search stage (`dfnas.search`) writes the files. ``data_options``
says how the strategy wants its data split, ``trained_network`` rebuilds its trained search network
and the forward that scores it (what `dfnas.supernet_test` scores). ``search`` also takes ``dist``,
the rank of a torchrun job (None in a single process): it then trains data-parallel and returns None
on ranks other than 0.
A new algorithm is one module and one `register_strategy` line below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from dfnas.registry import Registry


@dataclass(frozen=True)
class Strategy:
    name: str
    space: str  # the space it searches (dfnas.spaces)
    search: Callable
    # (search_args, space_args, choices) -> (search network, forward(model, x)) of the found architecture
    trained_network: Callable
    data_options: Callable[[dict], dict] = lambda scfg: {}  # SearchData options from search.<name>
    other_rules_keys: tuple[str, ...] = ()  # keys of search.<name> read by other rules, not by the search


STRATEGIES: Registry[Strategy] = Registry("search algorithm")


def register_strategy(strategy: Strategy) -> Strategy:
    return STRATEGIES.register(strategy.name, strategy)


def get_strategy(name: str) -> Strategy:
    return STRATEGIES.get(name)


def strategy_names() -> list[str]:
    return STRATEGIES.names()


# Registration: the modules import nothing from this package, so there is no cycle.
from dfnas.strategies import darts as _darts  # noqa: E402
from dfnas.strategies import proxyless as _proxyless  # noqa: E402
from dfnas.strategies import spos as _spos  # noqa: E402

register_strategy(Strategy("darts", "darts", _darts.search, _darts.trained_network))
register_strategy(Strategy("spos", "spos", _spos.search, _spos.trained_network, _spos.data_options,
                           other_rules_keys=("ranking",)))
register_strategy(Strategy("proxyless", "proxyless", _proxyless.search, _proxyless.trained_network,
                           _proxyless.data_options))
