"""Latency lookup tables: the time of every (block, operation) of the ProxylessNAS space on a device.

ProxylessNAS can make the expected latency of its supernet part of the architecture loss. The table
is measured once per device (inference at ``hardware.latency_batch``), stored as JSON, and read as a
`dfnas.flops.CostTable` with unit ms, the interface of the multiply-add tables.

    python -m dfnas.latency --config config.yaml --latency-table latency.json
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path

import torch

from dfnas.cli import cli_main, stage_config, stage_parser
from dfnas.data import SPECS
from dfnas.errors import DfnasError
from dfnas.flops import CostTable
from dfnas.runtime import read_json, resolve_device, write_json
from dfnas.spaces import proxyless as space
from dfnas.spaces.proxyless import OPS, ZERO, ProxylessNet, network_args


def table_from_json(table: dict) -> CostTable:
    """A measured table (``blocks[b][k]`` in ms, None where not allowed; ``base``) as a CostTable."""
    blocks = table["blocks"]
    values = torch.zeros(len(blocks), len(OPS), dtype=torch.float64)
    allowed = []
    for b, row in enumerate(blocks):
        allowed.append(tuple(k for k, v in enumerate(row) if v is not None))
        for k, v in enumerate(row):
            values[b, k] = 0.0 if v is None else float(v)
    return CostTable(float(table["base"]), values, allowed, unit="ms")


def _timed_ms(fn, device, repeats: int, min_seconds: float) -> float:
    """Median over ``repeats`` of the mean time of one call, each measurement at least ``min_seconds`` long."""

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, min(1000, math.ceil(min_seconds / once)))
    samples = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        sync()
        samples.append((time.perf_counter() - t0) / inner * 1000)
    return statistics.median(samples)


@torch.no_grad()
def measure_latency_table(space_args: dict, input_shape, device, batch: int = 1, repeats: int = 5,
                          min_seconds: float = 2e-3) -> dict:
    """Time every (block, operation) of the space on ``device`` (inference, batch ``batch``).

    Returns a JSON-serialisable dict: ``blocks[b][k]`` is the latency in ms of operation OPS[k] in
    block b (including the shortcut addition where the block has one; 0 for zero, None where not
    allowed), ``base`` the stem, first block and head together.
    """
    device = torch.device(device)
    net = ProxylessNet(None, in_channels=input_shape[0], num_classes=space_args.get("num_classes", 1000),
                       **network_args(space_args)).to(device).eval()
    gen = torch.Generator().manual_seed(0)  # not the global generator: measuring must not change a search
    x = torch.randn(batch, *input_shape, generator=gen).to(device)
    base = _timed_ms(lambda: net.features_in(x), device, repeats, min_seconds)
    h = net.features_in(x)
    blocks = []
    for block in net.blocks:
        row = [None] * len(OPS)
        for c in block.choices:
            row[c] = 0.0 if c == ZERO else _timed_ms(lambda c=c: block(h, c), device, repeats, min_seconds)
        blocks.append(row)
        h = block(h, block.choices[0])
    base += _timed_ms(lambda: net.head(h), device, repeats, min_seconds)
    return {"unit": "ms", "device": str(device), "batch": batch, "input_shape": list(input_shape),
            "space_args": measure_key(space_args), "ops": list(OPS), "base": base, "blocks": blocks}


def measure_key(space_args: dict) -> dict:
    """The network arguments a latency table was measured for, as they read back from JSON."""
    return {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in network_args(space_args).items()}


def latency_table(hw: dict, space_args: dict, input_shape, device, out_dir: Path, log=print) -> CostTable:
    """The table of ``search.proxyless.hardware``: the one given as ``latency_table`` (it must have
    been measured for this space and input shape), or one measured now on ``device`` and kept in
    ``out_dir`` (a resumed search reads it back, so that it continues with the same costs)."""
    if hw["latency_table"]:
        path = Path(hw["latency_table"])
        table = read_json(path, "search.proxyless.hardware.latency_table",
                          remedy="fix it, or measure a new one with python -m dfnas.latency")
        for key, value in (("space_args", measure_key(space_args)), ("input_shape", list(input_shape))):
            if table.get(key) != value:
                raise DfnasError(f"latency table {path} was measured for {key} {table.get(key)}, the search "
                                 f"has {value}; measure one with python -m dfnas.latency")
    else:
        path = out_dir / "latency_table.json"
        wanted = {"space_args": measure_key(space_args), "input_shape": list(input_shape),
                  "batch": hw["latency_batch"]}
        try:
            table = json.loads(path.read_text()) if path.is_file() else None
        except (OSError, ValueError):  # a table damaged with its job: measured again
            table = None
        if not isinstance(table, dict) or any(table.get(k) != v for k, v in wanted.items()):
            log(f"measuring the latency of every (block, operation) on {device}")
            table = measure_latency_table(space_args, input_shape, device, batch=hw["latency_batch"])
            write_json(path, table)
    n_blocks = sum(space_args["stage_blocks"])
    if len(table.get("blocks", [])) != n_blocks:
        raise DfnasError(f"latency table {path} has {len(table.get('blocks', []))} blocks, the space {n_blocks}")
    return table_from_json(table)


@cli_main
def main(argv=None):
    parser = stage_parser("latency", __doc__)
    parser.add_argument("--latency-table", required=True, help="JSON file to write")
    parser.add_argument("--batch", type=int, default=None, help="batch size (default: hardware.latency_batch)")
    parser.add_argument("--device", default=None, help="device (default: the config's)")
    args = parser.parse_args(argv)
    cfg = stage_config(args)
    spec = SPECS[cfg["data"]["name"]]
    scfg = cfg["search"]["proxyless"]
    device = resolve_device(args.device or cfg["device"])
    table = measure_latency_table(space.space_args(scfg, spec.input_shape, spec.num_classes), spec.input_shape, device,
                                  batch=args.batch or scfg["hardware"]["latency_batch"])
    write_json(Path(args.latency_table), table)
    print(f"latency table of {len(table['blocks'])} blocks on {device} written to {args.latency_table}: "
          f"fixed parts {table['base']:.3f} ms")


if __name__ == "__main__":
    main()
