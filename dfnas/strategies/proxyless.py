"""The ProxylessNAS search strategy (Cai, Zhu, Han, ICLR 2019): path-level binarization.

Every searchable block b has architecture parameters alpha_b, one per operation it allows; its
probabilities are p_b = softmax(alpha_b). Two kinds of steps alternate:

Weight step (``weight_step``): one operation per block is drawn from p_b and only that path is run,
so that training the supernet costs the memory of one network.

Architecture step (``arch_step``), on the held-out part of the data: per block two operations are
drawn without replacement from p_b, their probabilities are renormalized over the pair
(q = softmax(alpha_b[pair])), one of them is made active by a draw from q, and the block outputs

    g_a * o_a(x) + g_i * o_i(x)          (plus x where the block has a shortcut)

with binary gates g_a = 1, g_i = 0; the inactive output is computed without a graph (its
activations are not kept), so the step still holds about one path. The gradient reaches the two
alphas through the binary-gate rule

    dL/dalpha_i = sum_j dL/dg_j q_j (delta_ij - q_i),     i, j over the pair,

Adam (betas (0, 0.999): a zero gradient moves nothing) updates them, and then both are shifted by
the same offset so that their log-sum-exp is unchanged: the operations not drawn keep their
probabilities exactly (the paper's re-normalization). The zero operation has o(x) = 0, hence
dL/dg_zero = 0; unlike the released code, which skips a block whose active operation is zero, the
rule is applied to every block.

Hardware term: the expected cost of the supernet, E[cost] = base + sum_b sum_k p_bk cost_bk (zero
costs nothing), from a table of multiply-adds (``dfnas.spaces.proxyless.flops_table``) or of
latencies measured on the current device (``dfnas.latency``). Loss of the architecture step
(multiplicative form):

    L = CE * (E[cost] / target) ** weight

In the architecture step E[cost] uses the pair probabilities q (zero elsewhere), as the released code
does, so only the two drawn alphas get a gradient. ``weight`` is the elasticity d log L / d log E[cost];
the released code's default, CE * (log E / log target) ** 0.3 with target 300M multiply-adds, has an
elasticity of 0.3 / ln(3e8) = 0.015 at E = target. ``target`` only normalizes (a constant factor, to
which Adam is blind).

The weights train on ``train_portion`` of the data, the architecture parameters on the rest.

Data-parallel (a torchrun job, `dfnas.distributed`): every rank draws the same paths, pairs and
batch plan from the same generator and takes its share of each batch; the weight, gate and alpha
gradients are reduced to the global batch's (`Dist.batch_gradients`: L is linear in CE, so the
shares' gradients weighted by their sizes are exactly the batch's), and the ranks take the same
steps.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from dfnas import distributed
from dfnas.checkpoint import CHECKPOINT_NAME, Checkpoint
from dfnas.distributed import Dist
from dfnas.flops import count_parameters
from dfnas.latency import latency_table
from dfnas.optim import cosine_lr, set_lr, step_budget
from dfnas.runtime import autocast, autocast_forward, precision_name, progress, resolve_precision, seed_everything
from dfnas.search_data import SearchData
from dfnas.search_result import SearchResult
from dfnas.spaces.proxyless import OPS, ZERO, ProxylessNet, flops_table, space_args


class ArchParameters(nn.Module):
    """alpha of every block as one (blocks, len(OPS)) parameter; operations a block does not allow
    are masked out of its softmax (they get probability 0 and no gradient)."""

    def __init__(self, allowed, init_std: float = 1e-3):
        super().__init__()
        mask = torch.zeros(len(allowed), len(OPS), dtype=torch.bool)
        for b, ops in enumerate(allowed):
            mask[b, list(ops)] = True
        self.register_buffer("mask", mask)
        self.allowed = [tuple(ops) for ops in allowed]
        self.alpha = nn.Parameter(torch.randn(len(allowed), len(OPS)) * init_std * mask)

    def probs(self) -> torch.Tensor:
        return F.softmax(self.alpha.masked_fill(~self.mask, float("-inf")), dim=1)

    def argmax(self) -> list[int]:
        return self.probs().detach().argmax(1).tolist()

    def sample_path(self, generator: torch.Generator) -> list[int]:
        """One operation per block, drawn from its probabilities."""
        probs = self.probs().detach().cpu().double()
        return [int(torch.multinomial(p, 1, generator=generator)) for p in probs]

    def sample_pairs(self, generator: torch.Generator) -> tuple[list[tuple[int, int | None]], torch.Tensor]:
        """Two operations per block without replacement, the active one first (drawn from the pair's
        renormalized probabilities); and those probabilities q, shape (blocks, 2), differentiable in
        alpha. A block with a single operation gets (op, None) and q = (1, 0)."""
        probs, alpha = torch.stack([self.probs().detach(), self.alpha.detach()]).cpu().double()  # one read
        pairs = []
        for b, p in enumerate(probs):
            if len(self.allowed[b]) == 1:
                pairs.append((self.allowed[b][0], None))
                continue
            two = torch.multinomial(p, 2, replacement=False, generator=generator).tolist()
            q = F.softmax(alpha[b, two], 0)
            c = int(torch.multinomial(q, 1, generator=generator))
            pairs.append((two[c], two[1 - c]))
        return pairs, self.pair_probs(pairs)

    def pair_probs(self, pairs) -> torch.Tensor:
        """softmax(alpha_b[(active, inactive)]) per block, shape (blocks, 2)."""
        single = torch.tensor([1.0, 0.0], dtype=self.alpha.dtype, device=self.alpha.device)
        return torch.stack([single if i is None else F.softmax(self.alpha[b, [a, i]], 0)
                            for b, (a, i) in enumerate(pairs)])

    def scatter_pairs(self, pairs, q: torch.Tensor) -> torch.Tensor:
        """The (blocks, len(OPS)) probabilities that are q on each pair and 0 elsewhere."""
        rows, cols, vals = [], [], []
        for b, (a, i) in enumerate(pairs):
            for k, op in enumerate((a, i)):
                if op is not None:
                    rows.append(b)
                    cols.append(op)
                    vals.append(q[b, k])
        device = self.alpha.device
        index = (torch.tensor(rows, device=device), torch.tensor(cols, device=device))
        return torch.zeros_like(self.alpha).index_put(index, torch.stack(vals))


def binary_gate_grad(gate_grad: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """dL/dalpha_i = sum_j dL/dg_j q_j (delta_ij - q_i) for each row (block) of gate gradients."""
    return q * gate_grad - q * (q * gate_grad).sum(-1, keepdim=True)


def gated_forward(model: ProxylessNet, x: torch.Tensor, pairs, gates: torch.Tensor) -> torch.Tensor:
    """Forward with binary gates over two operations per block; the inactive output has no graph."""
    x = model.features_in(x)
    for b, block in enumerate(model.blocks):
        active, inactive = pairs[b]
        out = 0
        op = block.candidate(active)
        if op is not None:
            out = out + gates[b, 0] * op(x)
        if inactive is not None and inactive != ZERO:
            with torch.no_grad():
                other = block.candidate(inactive)(x)
            out = out + gates[b, 1] * other
        x = x + out if block.residual else out
    return model.head(x)


def hardware_loss(ce: torch.Tensor, cost: torch.Tensor | None, target: float | None, weight: float) -> torch.Tensor:
    """CE * (E[cost] / target) ** weight (CE alone without a cost)."""
    if cost is None or weight == 0:
        return ce
    return ce * (cost / target) ** weight


def weight_step(model: ProxylessNet, arch: ArchParameters, optimizer, x, y, loss_from_logits, generator,
                dist: Dist | None = None):
    """Draw one path, train the weights on it; return (loss, logits, path)."""
    path = arch.sample_path(generator)
    logits = model(x, path)
    loss = loss_from_logits(logits, y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if dist is not None:
        dist.reduce_grads(model.parameters(), len(y))
    optimizer.step()
    return loss.detach(), logits.detach(), path


def arch_step(model: ProxylessNet, arch: ArchParameters, optimizer, x, y, loss_from_logits, generator,
              cost_table=None, target: float | None = None, weight: float = 0.0, precision=None,
              dist: Dist | None = None) -> dict:
    """One architecture step on a batch; see the module docstring. Returns the loss, CE and E[cost]
    (detached tensors on the device; the rank's share's when data-parallel). ``precision``: the
    autocast dtype of the gated forward pass."""
    pairs, q = arch.sample_pairs(generator)
    gates = torch.zeros(len(pairs), 2, device=x.device)
    gates[:, 0] = 1.0
    gates.requires_grad_(True)
    with autocast(x.device, precision):
        logits = gated_forward(model, x, pairs, gates)
    ce = loss_from_logits(logits.float(), y)
    cost = None
    if cost_table is not None:
        cost = cost_table.expected(arch.scatter_pairs(pairs, q))
    loss = hardware_loss(ce, cost, target, weight)
    gate_grad, alpha_grad = torch.autograd.grad(loss, [gates, arch.alpha], allow_unused=True)
    if dist is not None:
        gate_grad, alpha_grad = dist.batch_gradients([gate_grad, alpha_grad], len(y))
    alpha_grad = torch.zeros_like(arch.alpha) if alpha_grad is None else alpha_grad.clone()
    two = binary_gate_grad(gate_grad.to(q.dtype), q.detach())
    for b, (a, i) in enumerate(pairs):
        alpha_grad[b, a] += two[b, 0]
        if i is not None:
            alpha_grad[b, i] += two[b, 1]
    old = arch.alpha.detach().clone()
    optimizer.zero_grad(set_to_none=True)
    arch.alpha.grad = alpha_grad
    optimizer.step()
    rescale_pairs(arch, old, pairs)
    return {"loss": loss.detach(), "ce": ce.detach(), "cost": None if cost is None else cost.detach()}


@torch.no_grad()
def rescale_pairs(arch: ArchParameters, old: torch.Tensor, pairs) -> None:
    """Shift the updated pair of every block so that its log-sum-exp is what it was before the step."""
    for b, (a, i) in enumerate(pairs):
        if i is None:
            continue
        idx = [a, i]
        offset = torch.logsumexp(arch.alpha[b, idx], 0) - torch.logsumexp(old[b, idx], 0)
        arch.alpha[b, idx] -= offset


def _cycle(make):
    """Batches of ``make()`` passes, one pass after another, without end."""
    while True:
        empty = True
        for batch in make():
            empty = False
            yield batch
        if empty:
            raise RuntimeError("the architecture part yields no batch")


def trained_network(search_args: dict, space_args: dict, choices: dict):
    """The supernet (its state to be loaded) and the forward that scores it: the found path (the
    argmax operation of every block), as the search's own held-out evaluation scores it."""
    ops = list(choices["ops"])
    return ProxylessNet(None, **search_args, dropout=0.0), lambda model, x: model(x, ops)


def data_options(scfg: dict) -> dict:
    return {"train_portion": scfg["train_portion"], "label_smoothing": scfg["label_smoothing"]}


def search(cfg: dict, data: SearchData, seed: int, out_dir: Path, device, log=print,
           dist: Dist | None = None) -> SearchResult | None:
    """Warm up the supernet's weights (one sampled path per step), then alternate weight steps with an
    architecture step every ``arch_every`` of them; the architecture is the argmax per block. After
    every epoch the argmax path is scored on the held-out part, BatchNorm recalibrated for it on
    ``bn_batches`` training batches.

    A checkpoint after every epoch; a resumed search ends as an uninterrupted one on the CPU. With
    ``dist`` (a rank of a torchrun job), data-parallel (module docstring; ``batch_size`` is the global
    batch): rank 0 measures the latency table (the others read it), scores, saves and returns the
    result; the other ranks return None.
    """
    s = cfg["search"]["proxyless"]
    hw = s["hardware"]
    out_dir = Path(out_dir)
    if dist is not None:
        for half in (0, 1):
            distributed.check_batch(dist, min(s["batch_size"], len(data.halves[half])), "search.proxyless.batch_size")
        log = log if dist.main else (lambda *_: None)
    args = space_args(s, data.input_shape, data.num_classes)
    flops = flops_table(args, data.input_shape)
    latency = None
    if hw["metric"] == "latency" or hw["latency_table"]:  # a given table also prices a FLOPs search's result
        if dist is not None and not dist.main:
            dist.barrier()  # rank 0 measures and writes the table first: every rank prices with it
        latency = latency_table(hw, args, data.input_shape, device, out_dir, log)
        if dist is not None and dist.main:
            dist.barrier()
    cost_table = {"flops": flops, "latency": latency}.get(hw["metric"])
    seed_everything(seed)
    model = ProxylessNet(None, **args, dropout=0.0).to(device)
    precision = resolve_precision(cfg["precision"], device)
    autocast_forward(model, device, precision)
    arch = ArchParameters(model.allowed, s["arch_init_std"]).to(device)
    model = data.in_memory_format(model)
    target = hw["target"]
    if cost_table is not None and target is None:  # the expected cost of the uniform supernet
        uniform = arch.mask.double() / arch.mask.sum(1, keepdim=True)
        target = float(cost_table.expected(uniform.cpu()))
    w_opt = torch.optim.SGD(model.parameters(), lr=s["lr"], momentum=s["momentum"], nesterov=s["nesterov"],
                            weight_decay=s["weight_decay"])
    betas = tuple(float(b) for b in s["arch_betas"])
    a_opt = torch.optim.Adam([arch.alpha], lr=s["arch_lr"], betas=betas, weight_decay=0)
    gen = torch.Generator().manual_seed(seed)
    bs = s["batch_size"]
    recal = data.recalibration_batches(s["bn_batches"], bs, seed)
    steps_per_epoch = data.steps_per_epoch(0, bs)
    warmup_total, warmup = step_budget(s["warmup_epochs"], s["warmup_iterations"], steps_per_epoch)
    search_total, epochs = step_budget(s["epochs"], s["iterations"], steps_per_epoch)
    total_epochs = warmup + epochs
    # How often the held-out part is scored changes no weight (the scores are read, recalibration
    # resets BatchNorm, no random draw): a checkpoint resumes across a change of eval_updates.
    trained_by = {k: v for k, v in s.items() if k != "eval_updates"}
    checkpoint = Checkpoint(out_dir / CHECKPOINT_NAME, {"search": trained_by, **data.fingerprint(seed),
                                                        "precision": precision_name(precision)}, log)
    stateful = {"model": model, "arch": arch, "w_opt": w_opt, "a_opt": a_opt}
    resumed = checkpoint.resume(stateful, gen)
    history, start = resumed.history, resumed.epoch
    every = s["eval_updates"]

    def evaluates(epoch: int, steps: int) -> bool:
        """Whether the held-out evaluation runs after ``epoch`` (``steps`` weight updates in it): at
        the end of each phase, and where the search's weight updates (warm-up included) passed a
        multiple of ``eval_updates``; counted from the epoch, so a resumed search evaluates where it
        would have."""
        if every is None or epoch + 1 in (warmup, total_epochs):
            return True
        before = epoch * steps_per_epoch if epoch < warmup else warmup_total + (epoch - warmup) * steps_per_epoch
        return (before + steps) // every > before // every

    t0 = time.time()
    for epoch in range(start, total_epochs):
        searching = epoch >= warmup
        model.train()
        zero = torch.zeros((), device=device)
        sums = {"loss": zero, "acc": zero, "steps": 0, "arch_loss": zero, "arch_steps": 0}
        arch_batches = _cycle(lambda: data.batches(1, bs, gen, dist)) if searching else None
        phase_step = ((epoch - warmup) if searching else epoch) * steps_per_epoch
        arch_steps_on = searching and epoch - warmup >= s["arch_skip_epochs"]
        phase_total = search_total if searching else warmup_total
        for x, y in data.batches(0, bs, gen, dist):
            if phase_step + sums["steps"] == phase_total:  # an update budget ends inside a pass
                break
            lr = cosine_lr(phase_step + sums["steps"], phase_total, s["lr"] if searching else s["warmup_lr"])
            set_lr(w_opt, lr)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss, logits, _ = weight_step(model, arch, w_opt, x, y, data.loss_from_logits, gen, dist)
            sums["loss"] = sums["loss"] + loss
            sums["acc"] = sums["acc"] + data.accuracy(logits, y)
            sums["steps"] += 1
            if arch_steps_on and sums["steps"] % s["arch_every"] == 0:
                ax, ay = next(arch_batches)
                out = arch_step(model, arch, a_opt, ax.to(device, non_blocking=True), ay.to(device, non_blocking=True), data.loss_from_logits, gen,
                                cost_table, target, hw["weight"], precision, dist)
                sums["arch_loss"] = sums["arch_loss"] + out["loss"]
                sums["arch_steps"] += 1
        steps = max(1, sums["steps"])
        train_loss, train_acc, arch_loss = distributed.epoch_sums(
            dist, torch.stack([sums["loss"], sums["acc"], sums["arch_loss"]]))
        ops = arch.argmax()
        val = {}
        if dist is None or dist.main:
            val = (data.evaluate(model, device, bs, ops, recalibrate=recal) if evaluates(epoch, sums["steps"])
                   else {"val_loss": "", "val_acc": ""})
        probs = arch.probs().detach().cpu()
        row = {"epoch": epoch + 1, "phase": "search" if searching else "warmup", "lr": lr,
               "train_loss": train_loss / steps, "train_acc": train_acc / steps,
               "arch_loss": arch_loss / sums["arch_steps"] if sums["arch_steps"] else "",
               "arch_steps": sums["arch_steps"], **val,
               "expected_macs": float(flops.expected(probs.double())), "argmax_macs": flops.cost(ops),
               "argmax_ops": " ".join(OPS[c] for c in ops)}
        if latency is not None:
            row["expected_latency_ms"] = float(latency.expected(probs.double()))
        for b, allowed in enumerate(arch.allowed):
            for k in allowed:
                row[f"p_{b}_{OPS[k]}"] = round(probs[b, k].item(), 6)
        history.append(row)
        distributed.on_main(dist, lambda: checkpoint.save(stateful, gen, history, epoch + 1,
                                                                    final=epoch + 1 == total_epochs))
        scored = row.get("val_acc", "") != ""  # not on other ranks than 0, nor between eval_updates
        held_out = f"  val loss {row['val_loss']:.3f}  acc {row['val_acc']:.3f}" if scored else ""
        log(f"proxyless {data.source} seed {seed}: {row['phase']} epoch {epoch + 1}/{total_epochs}  loss "
            f"{row['train_loss']:.3f}  acc {row['train_acc']:.3f}{held_out}  E[macs] {row['expected_macs'] / 1e6:.2f}M"
            f"  argmax {''.join(map(str, ops))}"
            f"  {progress(t0, epoch + 1, total_epochs, start)}")
    if not distributed.finish(dist):
        return None
    ops = arch.argmax()
    fixed = ProxylessNet(ops, **args)
    return SearchResult(space_args=args, choices={"ops": ops}, history=history, network=model, search_args=args,
                        found_by={"weight_updates": warmup_total + search_total, "heldout_acc": history[-1]["val_acc"],
                                  "multiply_adds": flops.cost(ops), "parameters": count_parameters(fixed),
                                  "latency_ms": None if latency is None else latency.cost(ops),
                                  "hardware_metric": hw["metric"], "hardware_target": target})
