"""The DARTS search strategy (Liu, Simonyan, Yang, ICLR 2019): bi-level optimization of weights
and architecture parameters on the cell space (`dfnas.spaces.darts`).

The training part of the data (part 0) trains the weights, the held-out part (part 1) the
architecture; one step of each per pair of batches, the architecture from ``arch_warmup_epochs`` on.

Weights ``w`` follow SGD on the training half; architecture parameters ``a`` follow Adam on the
gradient of the validation loss. First order uses ``dL_val(w, a)/da``. Second order uses the
unrolled weights ``w' = w - xi * dL_train(w, a)/dw`` (with the optimizer's momentum and weight
decay, as in DARTS) and

    dL_val(w', a)/da - xi * d2L_train(w, a)/(da dw) . dL_val(w', a)/dw'

where the Hessian-vector product is a central finite difference of ``dL_train/da`` at
``w +- eps * v`` with ``eps = 0.01 / ||v||``.

The `Architect` works on any network with ``weight_parameters()`` and ``arch_parameters()`` and a
loss function ``loss_fn(model, batch)``, so it serves every data source (cross-entropy on natural
images, distillation from cached soft labels on synthetic ones).
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
from dfnas.errors import DfnasError
from dfnas.optim import cosine_lr, set_lr, step_budget
from dfnas.runtime import autocast_forward, precision_name, progress, resolve_precision, seed_everything
from dfnas.search_data import SearchData
from dfnas.search_result import SearchResult
from dfnas.spaces.darts import PRIMITIVES, SearchNetwork, genotype_to_dict, search_args


class Architect:
    """The architecture step. ``dist`` (a rank of a torchrun job, each holding its share of every
    batch): every gradient it takes is the global batch's (`dfnas.distributed.Dist.batch_gradients`),
    so all ranks take the same step."""

    def __init__(self, model, loss_fn, lr: float = 3e-4, betas=(0.5, 0.999), weight_decay: float = 1e-3,
                 order: int = 1, network_momentum: float = 0.9, network_weight_decay: float = 3e-4, forward=None,
                 dist: Dist | None = None):
        if order not in (1, 2):
            raise ValueError("DARTS order is 1 or 2")
        self.model = model
        self.forward = model if forward is None else forward  # the compiled network, where compiled
        self.dist = dist
        self.loss_fn = loss_fn
        self.order = order
        self.momentum = network_momentum
        self.weight_decay = network_weight_decay
        self.optimizer = torch.optim.Adam(model.arch_parameters(), lr=lr, betas=tuple(betas), weight_decay=weight_decay)

    def grad(self, loss: torch.Tensor, tensors, batch) -> list:
        """d loss / d tensors (None where unused), of the global batch when data-parallel."""
        grads = list(torch.autograd.grad(loss, tensors, allow_unused=True))
        return grads if self.dist is None else self.dist.batch_gradients(grads, len(batch[1]))

    def step(self, train_batch, val_batch, xi: float, w_optimizer: torch.optim.Optimizer | None = None) -> torch.Tensor:
        """One architecture step; ``xi`` is the current weight learning rate (second order only).
        Returns the validation loss, detached, on the device."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.order == 1:
            loss = self.loss_fn(self.forward, val_batch)
            grads = self.grad(loss, self.model.arch_parameters(), val_batch)
        else:
            loss, grads = self.unrolled_gradient(train_batch, val_batch, xi, w_optimizer)
        for p, g in zip(self.model.arch_parameters(), grads):
            p.grad = g.detach().clone()
        self.optimizer.step()
        return loss.detach()

    def unrolled_gradient(self, train_batch, val_batch, xi: float, w_optimizer=None):
        """The second-order architecture gradient (and the validation loss at the unrolled weights)."""
        weights = self.model.weight_parameters()
        alphas = self.model.arch_parameters()
        original = [w.detach().clone() for w in weights]
        # Virtual step w' = w - xi * (momentum * buffer + dL_train/dw + wd * w)
        train_loss = self.loss_fn(self.forward, train_batch)
        grads = self.grad(train_loss, weights, train_batch)
        with torch.no_grad():
            for w, g, w0 in zip(weights, grads, original):
                g = torch.zeros_like(w) if g is None else g
                buf = 0.0
                if w_optimizer is not None and self.momentum:
                    state = w_optimizer.state.get(w, {})
                    if "momentum_buffer" in state and state["momentum_buffer"] is not None:
                        buf = self.momentum * state["momentum_buffer"]
                w.copy_(w0 - xi * (buf + g + self.weight_decay * w0))
        # Gradients of the validation loss at w'
        val_loss = self.loss_fn(self.forward, val_batch)
        dalpha_val = self.grad(val_loss, alphas + weights, val_batch)
        d_alpha = [g if g is not None else torch.zeros_like(a) for g, a in zip(dalpha_val[: len(alphas)], alphas)]
        v = [g if g is not None else torch.zeros_like(w) for g, w in zip(dalpha_val[len(alphas):], weights)]
        # Hessian-vector product by central differences around the original w
        eps = 0.01 / torch.sqrt(sum((g * g).sum() for g in v)).clamp(min=1e-12)
        hessian = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                for w, w0, g in zip(weights, original, v):
                    w.copy_(w0 + sign * eps * g)
            loss = self.loss_fn(self.forward, train_batch)
            hessian.append(self.grad(loss, alphas, train_batch))
        with torch.no_grad():
            for w, w0 in zip(weights, original):
                w.copy_(w0)
        result = []
        for g, hp, hm, a in zip(d_alpha, hessian[0], hessian[1], alphas):
            hp = torch.zeros_like(a) if hp is None else hp
            hm = torch.zeros_like(a) if hm is None else hm
            result.append(g - xi * (hp - hm) / (2 * eps))
        return val_loss, result


def weight_step(model, forward, optimizer, batch, loss_from_logits, grad_clip: float, dist: Dist | None = None):
    """One SGD step of the weights on the training batch (gradients clipped to norm ``grad_clip``;
    the global batch's gradients when data-parallel). Returns the loss and the logits, detached."""
    logits = forward(batch[0])
    loss = loss_from_logits(logits, batch[1])
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if dist is not None:
        dist.reduce_grads(model.weight_parameters(), len(batch[1]))
    nn.utils.clip_grad_norm_(model.weight_parameters(), grad_clip)
    optimizer.step()
    return loss.detach(), logits.detach()


def compiled(model: nn.Module, setting: bool | str):
    """``model`` through torch.compile (``setting``: true for the default backend, or a backend's
    name), or ``model`` itself (false). The module keeps its parameters and state dict; only the
    calls made through the returned one are compiled."""
    if setting is False:
        return model
    return torch.compile(model, **({} if setting is True else {"backend": setting}))


def search_precision(name: str, device, order: int, log=print):
    """The autocast dtype of a DARTS search for config key ``precision``. ``auto`` is float32 here:
    a search step is bound by kernel launches (tens of thousands of small operations), and autocast's
    casts add to them (8 cells x 16 channels, batch 64, H100: 0.655 s a step in bf16 against 0.430 s
    in float32). ``bf16`` is honoured for first order; the unrolled gradient's finite differences of
    second order drown in bfloat16 rounding, so it runs in float32."""
    if name == "auto":
        return None
    precision = resolve_precision(name, device)
    if precision is not None and order == 2:
        log("darts: second-order search runs in float32 (precision bf16 is for first order)")
        return None
    return precision


def trained_network(search_args: dict, space_args: dict, choices: dict):
    """The search network (its state to be loaded) and the forward that scores it: the whole mixed
    network, as the search's own held-out evaluation scores it."""
    return SearchNetwork(**search_args, **space_args), lambda model, x: model(x)


def search(cfg: dict, data: SearchData, seed: int, out_dir: Path, device, log=print,
           dist: Dist | None = None) -> SearchResult | None:
    """Alternate architecture and weight steps for ``epochs`` passes or ``iterations`` steps (weight
    learning rate cosine-decayed per step); after every pass the search network is scored on the
    held-out part (BatchNorm recalibrated on ``bn_batches`` training batches). The architecture is
    the genotype derived from the final architecture parameters. With ``compile``, the training
    forward passes (weight and architecture steps) go through torch.compile; evaluation stays eager.

    With ``dist`` (a rank of a torchrun job) the search is data-parallel: every rank draws the same
    batch plan and takes its share of each batch of both parts (``batch_size`` is the global batch),
    and the weight and architecture gradients are the global batch's, so the ranks take the same
    steps. Rank 0 scores, saves and returns the result; the other ranks return None."""
    dcfg = cfg["search"]["darts"]
    if dist is not None:
        for half in (0, 1):
            distributed.check_batch(dist, min(dcfg["batch_size"], len(data.halves[half])), "search.darts.batch_size")
        log = log if dist.main else (lambda *_: None)
    seed_everything(seed)
    args = search_args(dcfg, data.input_shape, data.num_classes)
    precision = search_precision(cfg["precision"], device, dcfg["order"], log)
    model = autocast_forward(SearchNetwork(**args).to(device), device, precision)
    model = data.in_memory_format(model)
    w_opt = torch.optim.SGD(model.weight_parameters(), lr=dcfg["lr"], momentum=dcfg["momentum"],
                            weight_decay=dcfg["weight_decay"])
    forward = compiled(model, dcfg["compile"])
    architect = Architect(model, data.loss, lr=dcfg["arch_lr"], betas=dcfg["arch_betas"],
                          weight_decay=dcfg["arch_weight_decay"], order=dcfg["order"],
                          network_momentum=dcfg["momentum"], network_weight_decay=dcfg["weight_decay"],
                          forward=forward, dist=dist)
    bs = dcfg["batch_size"]
    steps_per_epoch = min(data.steps_per_epoch(0, bs), data.steps_per_epoch(1, bs))
    total, epochs = step_budget(dcfg["epochs"], dcfg["iterations"], steps_per_epoch)
    if dcfg["arch_warmup_epochs"] >= epochs:  # with iterations set, the config check cannot see this
        raise DfnasError(f"config key 'search.darts.arch_warmup_epochs': {dcfg['arch_warmup_epochs']} warm-up epochs "
                         f"of the {epochs} that search.darts.iterations {dcfg['iterations']} make on "
                         f"{len(data.halves[0])} images leave the architecture no step; lower it")
    recal = data.recalibration_batches(dcfg["bn_batches"], bs, seed)
    gen = torch.Generator().manual_seed(seed)
    checkpoint = Checkpoint(Path(out_dir) / CHECKPOINT_NAME, {"search": dcfg, **data.fingerprint(seed),
                                                              "precision": precision_name(precision)}, log)
    stateful = {"model": model, "w_opt": w_opt, "a_opt": architect.optimizer}
    resumed = checkpoint.resume(stateful, gen)
    history, start = resumed.history, resumed.epoch
    t0 = time.time()
    for epoch in range(start, epochs):
        model.train()
        sums = {"train_loss": torch.zeros((), device=device), "train_acc": torch.zeros((), device=device),
                "arch_loss": torch.zeros((), device=device), "steps": 0}
        for train_batch, val_batch in zip(data.batches(0, bs, gen, dist), data.batches(1, bs, gen, dist)):
            step = epoch * steps_per_epoch + sums["steps"]
            if step == total:  # an update budget ends inside a pass
                break
            lr = cosine_lr(step, total, dcfg["lr"], minimum=dcfg["lr_min"])
            set_lr(w_opt, lr)
            train_batch = tuple(t.to(device, non_blocking=True) for t in train_batch)
            val_batch = tuple(t.to(device, non_blocking=True) for t in val_batch)
            if epoch >= dcfg["arch_warmup_epochs"]:
                sums["arch_loss"] += architect.step(train_batch, val_batch, lr, w_opt)
            loss, logits = weight_step(model, forward, w_opt, train_batch, data.loss_from_logits, dcfg["grad_clip"],
                                       dist)
            sums["train_loss"] += loss
            sums["train_acc"] += data.accuracy(logits, train_batch[1])
            sums["steps"] += 1
        steps = max(1, sums["steps"])
        train_loss, train_acc, arch_loss = distributed.epoch_sums(
            dist, torch.stack([sums["train_loss"], sums["train_acc"], sums["arch_loss"]]))
        row = {"epoch": epoch + 1, "lr": lr, "train_loss": train_loss / steps, "train_acc": train_acc / steps,
               "arch_loss": arch_loss / steps,
               **(data.evaluate(model, device, bs, recalibrate=recal) if dist is None or dist.main else {})}
        for kind, alphas in (("normal", model.alphas_normal), ("reduce", model.alphas_reduce)):
            probs = F.softmax(alphas.detach().cpu(), dim=-1)
            for e in range(probs.shape[0]):
                for k, name in enumerate(PRIMITIVES):
                    row[f"alpha_{kind}_{e}_{name}"] = round(probs[e, k].item(), 6)
        history.append(row)
        distributed.on_main(dist, lambda: checkpoint.save(stateful, gen, history, epoch + 1,
                                                                    final=epoch + 1 == epochs))
        log(f"darts {data.source} seed {seed}: epoch {epoch + 1}/{epochs}  train loss {row['train_loss']:.3f}"
            f"  acc {row['train_acc']:.3f}  val loss {row.get('val_loss', 0):.3f}  acc {row.get('val_acc', 0):.3f}"
            f"  {progress(t0, epoch + 1, epochs, start)}")
    if not distributed.finish(dist):
        return None
    return SearchResult(space_args={k: args[k] for k in ("steps", "multiplier")},
                        choices=genotype_to_dict(model.genotype()), history=history, network=model,
                        search_args={k: args[k] for k in ("in_channels", "resolution", "num_classes", "cells",
                                                          "channels")},
                        found_by={"weight_updates": total, "heldout_acc": history[-1]["val_acc"],
                                  "precision": precision_name(precision)})
