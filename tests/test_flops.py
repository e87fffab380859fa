"""Cost tables (dfnas.flops): a path's cost, the expected cost of a distribution over paths, the cheapest
and dearest path under what each block allows, and the generic multiply-add table of a space."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dfnas.flops import CostTable, count_macs, flops_table

TABLE = torch.tensor([[1, 2, 3], [10, 20, 30]])  # 2 blocks x 3 choices (ints: the table is made float64)


def test_cost_of_a_path():
    table = CostTable(100, TABLE)
    assert table.table.dtype == torch.float64 and (table.n_blocks, table.n_choices) == (2, 3)
    assert table.cost([0, 2]) == 131 and isinstance(table.cost([0, 2]), int)  # multiply-adds are counts
    assert table.cost((2, 1)) == 123
    ms = CostTable(0.5, TABLE / 4, unit="ms")
    assert ms.cost([0, 2]) == pytest.approx(0.5 + 0.25 + 7.5) and isinstance(ms.cost([0, 2]), float)


def test_expected_cost_of_one_hot_probabilities_is_the_path_cost():
    table = CostTable(100, TABLE)
    for path in itertools.product(range(3), repeat=2):
        onehot = F.one_hot(torch.tensor(path), 3).double()
        assert table.expected(onehot).item() == table.cost(path)
    uniform = torch.full((2, 3), 1 / 3, dtype=torch.float64, requires_grad=True)
    expected = table.expected(uniform)
    assert expected.item() == pytest.approx(100 + 2 + 20)
    (grad,) = torch.autograd.grad(expected, uniform)
    assert torch.equal(grad, TABLE.double())  # d E / d p[b, k] = table[b, k]
    assert table.expected(uniform.detach().float()).dtype == torch.float32  # follows the probabilities


def test_bounds_over_what_each_block_allows():
    assert CostTable(100, TABLE).bounds() == (111, 133)
    restricted = CostTable(100, TABLE, allowed=[(1, 2), (0,)])
    assert restricted.allowed == [(1, 2), (0,)]
    assert restricted.bounds() == (112, 113)
    ms = CostTable(1.0, TABLE / 10, allowed=[(0, 2), (1, 2)], unit="ms")
    assert ms.bounds() == pytest.approx((1.0 + 0.1 + 2.0, 1.0 + 0.3 + 3.0))


class Toy(nn.Module):
    """A stem, two searchable blocks (choice k: a (2k+1)x(2k+1) convolution, 2 channels in and out) and a head."""

    def __init__(self, path):
        super().__init__()
        self.stem = nn.Conv2d(1, 2, 3, padding=1)
        self.blocks = nn.ModuleList([nn.Conv2d(2, 2, 2 * k + 1, padding=k) for k in path])
        self.head = nn.Linear(2, 5)

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean((2, 3)))


def test_generic_flops_table_counts_blocks_and_fixed_parts_once():
    table = flops_table(lambda k: Toy((k, k)), range(3), 3, (1, 4, 4))
    # On 4x4: the stem (16 * 2 * 9) and the head (2 * 5) are fixed; choice k costs 16 * 2 * 2 * (2k+1)^2.
    assert table.base == 16 * 2 * 9 + 10
    assert table.table.tolist() == [[64.0, 576.0, 1600.0]] * 2
    for path in itertools.product(range(3), repeat=2):
        assert table.cost(path) == count_macs(Toy(path), (1, 4, 4))
    narrowed = flops_table(lambda k: Toy((k, k)), [0, 2], 3, (1, 4, 4), allowed=[(0, 2), (2,)])
    assert narrowed.table[:, 1].tolist() == [0.0, 0.0]  # a choice not built costs nothing
    assert narrowed.bounds() == (table.base + 64 + 1600, table.base + 1600 + 1600)
