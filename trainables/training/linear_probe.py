"""Linear probes on cached features, many at once.

:func:`train_probes` trains P softmax-regression probes (each with its own lr, weight decay,
epochs, target and loss options) in one loop over the data: their weights are stacked into one
``(P, C, D)`` tensor, all probes see the same batches (one shuffle per epoch, shared), the loss
and its gradient are computed for all probes at once, and probes with fewer epochs drop out at the
end of their last epoch. No DataLoader, no autograd graph, no optimizer objects, no per-step host
sync: per step and probe, two matmuls and one Adam update (see :class:`_Chunk` for the CPU and GPU
variants).

The gradient is written out rather than taken by autograd: every objective here is a soft-target
cross-entropy (soft weak labels, hard labels, label smoothing and the auxiliary-confidence target
are all targets ``T`` summing to 1), whose gradient with respect to the logits is
``softmax(z) - T``. :func:`train_probe_reference` trains one probe the ordinary way (``nn.Linear``,
``torch.optim.Adam``, autograd through the registered losses); the tests hold the two equal.

Probes are trained in chunks, each running a whole epoch before the next: on a CPU a chunk is
sized so its Adam state stays in cache (:func:`default_chunk_size`); on a GPU all probes form one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from trainables.losses.auxconf import auxconf_coef, auxconf_target

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
CPU_CHUNK_BYTES = 16 << 20  # Adam state per chunk that stays in a CPU's last-level cache (4 probes at D=2048, C=100)


@dataclass(frozen=True)
class ProbeSpec:
    """One probe to train. Equal specs give equal probes, so callers can train each once."""

    target: str  # which of the targets passed to train_probes
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 10
    aux_coef: float = 0.0  # auxiliary-confidence weight (0: plain cross-entropy)
    warmup_frac: float = 0.1
    label_smoothing: float = 0.0
    init: int = 0  # initialisation stream: probes with the same stream start from the same weights


def init_linear(dim: int, classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.Linear``'s default initialisation (uniform in +-1/sqrt(dim) for weight and bias), drawn
    from a seeded generator. Returns the weight (classes, dim), as ``nn.Linear`` holds it, and the bias."""
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(dim)
    weight = (torch.rand(classes, dim, generator=gen) * 2 - 1) * bound
    bias = (torch.rand(classes, generator=gen) * 2 - 1) * bound
    return weight, bias


def init_seed(seed: int, stream: int) -> int:
    return seed * 1_000_003 + stream


def as_probabilities(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Targets as (N, C) float rows summing to 1: labels become one-hot rows."""
    if target.dim() == 1:
        return nn.functional.one_hot(target.long(), num_classes).float()
    return target.float()


def cosine_factor(step: torch.Tensor | int, total: torch.Tensor) -> torch.Tensor:
    """Per-step cosine from 1 to 0 over ``total`` steps (``CosineAnnealingLR`` with T_max=total)."""
    return 0.5 * (1.0 + torch.cos(math.pi * torch.clamp(step / total, max=1.0)))


def default_chunk_size(dim: int, classes: int, device: torch.device) -> int | None:
    """Probes per chunk: all of them on a GPU (None), else as many as keep Adam's state in cache."""
    if device.type != "cpu":
        return None
    per_probe = 4 * 4 * (dim + 1) * classes  # weights, gradient and two moments, float32
    return max(1, CPU_CHUNK_BYTES // per_probe)


class _Chunk:
    """A group of probes trained together: weights (c, C, D), biases (c, C) and Adam state.

    Two ways to run a step, the same arithmetic: ``per_probe`` (the CPU default) runs one matmul
    pair and one fused Adam kernel (``torch._fused_adam_``, what ``torch.optim.Adam(fused=True)``
    calls) per probe on contiguous per-probe slices, which keeps each probe's state in cache and
    reads it once per step; otherwise (GPU) every step is a few batched kernels over all probes,
    with Adam written out on the stacked state and per-probe learning rates.
    """

    def __init__(self, ids: list[int], specs: list[ProbeSpec], dim: int, classes: int, seed: int,
                 steps_per_epoch: int, device: torch.device, per_probe: bool):
        self.ids, self.specs, self.per_probe = ids, specs, per_probe
        inits = {s.init: init_linear(dim, classes, init_seed(seed, s.init)) for s in specs}
        self.W = torch.stack([inits[s.init][0] for s in specs]).to(device)  # (c, C, D)
        self.b = torch.stack([inits[s.init][1] for s in specs]).to(device)  # (c, C)
        self.mW, self.vW = torch.zeros_like(self.W), torch.zeros_like(self.W)
        self.mb, self.vb = torch.zeros_like(self.b), torch.zeros_like(self.b)
        self.loss_sum = torch.zeros(len(specs), device=device)
        self.adam_step = torch.zeros((), device=device)  # the fused kernel reads Adam's step from a tensor
        self._vectors(device, steps_per_epoch)

    def _vectors(self, device: torch.device, steps_per_epoch: int) -> None:
        vec = lambda name: torch.tensor([float(getattr(s, name)) for s in self.specs], device=device)  # noqa: E731
        self.lr, self.wd = vec("lr"), vec("weight_decay")
        self.total = vec("epochs") * steps_per_epoch
        self.aux, self.warmup, self.smoothing = vec("aux_coef"), vec("warmup_frac"), vec("label_smoothing")
        self.totals = [s.epochs * steps_per_epoch for s in self.specs]
        self.any_smoothing = any(s.label_smoothing > 0 for s in self.specs)
        self.any_aux = any(s.aux_coef > 0 for s in self.specs)
        self.targets = sorted({s.target for s in self.specs})
        self.masks = {t: torch.tensor([float(s.target == t) for s in self.specs], device=device).view(-1, 1, 1)
                      for t in self.targets}

    def keep(self, keep: list[int], steps_per_epoch: int) -> None:
        """Drop the probes not in ``keep`` (positions in this chunk)."""
        index = torch.tensor(keep, device=self.W.device)
        self.ids = [self.ids[i] for i in keep]
        self.specs = [self.specs[i] for i in keep]
        for name in ("W", "mW", "vW", "b", "mb", "vb", "loss_sum"):
            setattr(self, name, getattr(self, name).index_select(0, index).contiguous())
        self._vectors(self.W.device, steps_per_epoch)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(c, n, C) logits of every probe."""
        if self.per_probe:
            return torch.stack([torch.addmm(self.b[j], x, self.W[j].t()) for j in range(len(self.specs))])
        return torch.einsum("nd,pkd->pnk", x, self.W) + self.b.unsqueeze(1)

    def step(self, xb: torch.Tensor, batch_targets: dict[str, torch.Tensor], t: int) -> None:
        c, C, D = self.W.shape
        B = len(xb)
        z = self.logits(xb)  # (c, B, C)
        if len(self.targets) == 1:
            target = batch_targets[self.targets[0]].unsqueeze(0).expand(c, B, C)
        else:
            target = sum(self.masks[name] * batch_targets[name].unsqueeze(0) for name in self.targets)
        if self.any_smoothing:
            ls = self.smoothing.view(c, 1, 1)
            target = target * (1 - ls) + ls / C
        if self.any_aux:
            coef = auxconf_coef(t / self.total, self.aux, self.warmup)
            target = auxconf_target(target, z, coef.view(c, 1, 1))
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        self.loss_sum += (lse.squeeze(-1) - (target * z).sum(-1)).sum(1)
        grad_z = (z - lse).exp_().sub_(target).div_(B)  # d mean_i CE / d z = (softmax(z) - T) / B
        grad_b = grad_z.sum(1)
        if self.per_probe:
            self._per_probe_update(xb, grad_z, grad_b, t)
            return
        grad_W = torch.einsum("pbk,bd->pkd", grad_z, xb)
        step_size = self.lr * cosine_factor(t, self.total) / (1 - ADAM_BETAS[0] ** (t + 1))
        bc2_sqrt = math.sqrt(1 - ADAM_BETAS[1] ** (t + 1))
        _adam(self.W, grad_W, self.mW, self.vW, self.wd.view(c, 1, 1), step_size.view(c, 1, 1), bc2_sqrt)
        _adam(self.b, grad_b, self.mb, self.vb, self.wd.view(c, 1), step_size.view(c, 1), bc2_sqrt)

    def _per_probe_update(self, xb: torch.Tensor, grad_z: torch.Tensor, grad_b: torch.Tensor, t: int) -> None:
        grad_W = torch.empty_like(self.W)
        self.adam_step.fill_(t + 1)
        for j, spec in enumerate(self.specs):
            torch.mm(grad_z[j].t(), xb, out=grad_W[j])
            lr = spec.lr * 0.5 * (1.0 + math.cos(math.pi * min(t / self.totals[j], 1.0)))
            torch._fused_adam_([self.W[j], self.b[j]], [grad_W[j], grad_b[j]], [self.mW[j], self.mb[j]],
                               [self.vW[j], self.vb[j]], [], [self.adam_step, self.adam_step], lr=lr,
                               beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], weight_decay=spec.weight_decay,
                               eps=ADAM_EPS, amsgrad=False, maximize=False)


def _adam(param: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, wd: torch.Tensor,
          step_size: torch.Tensor, bc2_sqrt: float) -> None:
    """``torch.optim.Adam`` (L2 weight decay added to the gradient, no AMSGrad), in place, with
    per-probe weight decay and step size ``lr_t / (1 - beta1^t)``."""
    grad.addcmul_(param, wd)
    m.lerp_(grad, 1 - ADAM_BETAS[0])
    v.mul_(ADAM_BETAS[1]).addcmul_(grad, grad, value=1 - ADAM_BETAS[1])
    denom = torch.sqrt(v, out=grad).div_(bc2_sqrt).add_(ADAM_EPS)  # reuses the gradient's memory
    param.sub_(torch.div(m, denom, out=denom).mul_(step_size))


@dataclass
class EpochView:
    """What :func:`train_probes` shows after each epoch: the probes trained in it (spec indices;
    a probe appears in every epoch up to its last), their mean training loss, and predictions."""

    epoch: int
    probe_ids: list[int]
    train_loss: torch.Tensor
    chunks: list[_Chunk]
    rows_per_block: int = 4096

    def _per_chunk(self, x: torch.Tensor, reduce: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``reduce(logits)`` for blocks of rows, chunk by chunk, bounding the logits held at once."""
        parts = []
        for chunk in self.chunks:
            c, C = chunk.b.shape
            rows = max(1, min(self.rows_per_block, (1 << 26) // max(1, c * C)))
            parts.append(torch.cat([reduce(chunk.logits(x[i:i + rows])) for i in range(0, len(x), rows)], dim=1))
        return torch.cat(parts)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted labels of every probe in ``probe_ids`` order: (len(probe_ids), len(x))."""
        return self._per_chunk(x, lambda z: z.argmax(-1))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of every probe in ``probe_ids`` order: (len(probe_ids), len(x), C)."""
        return self._per_chunk(x, lambda z: z)


@torch.no_grad()
def train_probes(x: torch.Tensor, targets: dict[str, torch.Tensor], specs: list[ProbeSpec], *,
                 num_classes: int, batch_size: int, seed: int, on_epoch: Callable[[EpochView], None],
                 chunk_size: int | None = None, per_probe: bool | None = None,
                 device: torch.device | None = None) -> None:
    """Train every probe in ``specs`` on features ``x`` (N, D).

    ``targets`` maps a name to labels (N,) or probabilities (N, C); each spec names one. Batches
    follow a (seed, epoch) shuffle shared by all probes; probe inits follow (seed, spec.init).
    ``on_epoch`` is called after every epoch with an :class:`EpochView`. ``chunk_size`` and
    ``per_probe`` (see :class:`_Chunk`) default to what is fastest on the device; the results
    are the same either way.
    """
    device = device or x.device
    x = x.to(device, torch.float32)
    n, dim = x.shape
    probs = {name: as_probabilities(t.to(device), num_classes) for name, t in targets.items()}
    unknown = {s.target for s in specs} - set(probs)
    if unknown:
        raise KeyError(f"probe targets {sorted(unknown)} are not among {sorted(probs)}")
    steps_per_epoch = math.ceil(n / batch_size)
    if chunk_size is None:
        chunk_size = default_chunk_size(dim, num_classes, device) or len(specs)
    # Probes that stop at the same epoch share chunks, so chunks rarely need compacting.
    order = sorted(range(len(specs)), key=lambda i: (-specs[i].epochs, specs[i].target))
    per_probe = device.type == "cpu" if per_probe is None else per_probe
    chunks = [_Chunk(ids, [specs[i] for i in ids], dim, num_classes, seed, steps_per_epoch, device, per_probe)
              for ids in (order[i:i + chunk_size] for i in range(0, len(order), chunk_size))]
    max_epochs = max((s.epochs for s in specs), default=0)
    for epoch in range(max_epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).to(device)
        xp = x[perm]
        tp = {name: p[perm] for name, p in probs.items()}
        for chunk in chunks:
            for s in range(steps_per_epoch):
                rows = slice(s * batch_size, (s + 1) * batch_size)
                chunk.step(xp[rows], {name: t[rows] for name, t in tp.items()}, epoch * steps_per_epoch + s)
        losses = torch.cat([chunk.loss_sum / n for chunk in chunks]) if chunks else torch.empty(0)
        on_epoch(EpochView(epoch + 1, [i for chunk in chunks for i in chunk.ids], losses, chunks))
        remaining = []
        for chunk in chunks:
            chunk.loss_sum.zero_()
            keep = [j for j, spec in enumerate(chunk.specs) if spec.epochs > epoch + 1]
            if len(keep) == len(chunk.specs):
                remaining.append(chunk)
            elif keep:
                chunk.keep(keep, steps_per_epoch)
                remaining.append(chunk)
        chunks = remaining


def reference_loss(aux: nn.Module, logits: torch.Tensor, target: torch.Tensor, spec: ProbeSpec,
                   progress: float) -> torch.Tensor:
    """One probe's loss the ordinary way, with autograd: cross-entropy against probability
    targets, or the registered ``auxconf`` loss (``aux``) with the targets as its teacher."""
    if spec.aux_coef > 0:
        from trainables.losses import LossInputs

        return aux(LossInputs(student_logits=logits, targets=target.argmax(-1), teacher_logits=target.log(),
                              progress=progress))["loss"]
    return nn.functional.cross_entropy(logits, target)


def train_probe_reference(x: torch.Tensor, target: torch.Tensor, spec: ProbeSpec, *, num_classes: int,
                          batch_size: int, seed: int) -> tuple[nn.Linear, list[float]]:
    """One probe trained the ordinary way, with the same init and batch order as
    :func:`train_probes`: ``nn.Linear``, ``torch.optim.Adam``, a per-step cosine ``LambdaLR`` and
    autograd through ``F.cross_entropy`` or the registered ``auxconf`` loss. Returns the probe and
    its mean training loss per epoch."""
    from trainables.losses import create_loss

    n, dim = x.shape
    probe = nn.Linear(dim, num_classes)
    weight, bias = init_linear(dim, num_classes, init_seed(seed, spec.init))
    with torch.no_grad():
        probe.weight.copy_(weight)
        probe.bias.copy_(bias)
    optimizer = torch.optim.Adam(probe.parameters(), lr=spec.lr, weight_decay=spec.weight_decay,
                                 betas=ADAM_BETAS, eps=ADAM_EPS)
    steps_per_epoch = math.ceil(n / batch_size)
    total = spec.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: float(cosine_factor(torch.tensor(float(step)), torch.tensor(float(total)))))
    aux = create_loss("auxconf", {"aux_coef": spec.aux_coef, "warmup_frac": spec.warmup_frac})
    probs = as_probabilities(target, num_classes)
    losses, t = [], 0
    for epoch in range(spec.epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        total_loss = 0.0
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size]
            z = probe(x[idx])
            soft = probs[idx] * (1 - spec.label_smoothing) + spec.label_smoothing / num_classes
            loss = reference_loss(aux, z, soft, spec, t / total)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total_loss += float(loss.detach()) * len(idx)
            t += 1
        losses.append(total_loss / n)
    return probe, losses
