"""DAPT's CRD distiller: CE + KD + contrastive representation distillation (Tian et al. 2020,
as ported by RepDistiller and DAPT).

u_s = g_s(f_s), u_t = g_t(f_t) are learnable, unit-norm projections. Two memory banks M_s, M_t
(n_train x embed_dim, initialised uniform in ±1/sqrt(embed_dim/3)) hold one slot per training
sample. For anchor i with contrast set {i} ∪ {K indices drawn uniformly, with replacement, from
the training samples of *other* classes}:

    P_t[k] = exp(<M_s[idx_k], u_t,i> / τ) / Z_t,     P_s[k] = exp(<M_t[idx_k], u_s,i> / τ) / Z_s
    (Z = mean(exp(...)) * n_train, fixed on the first batch; P[0] is the positive)
    NCE(P) = -[ log(P[0] / (P[0] + K/n + ε)) + Σ_{k≥1} log((K/n) / (P[k] + K/n + ε)) ],  mean over the batch
    L = label_weight·CE + kd_weight·T²·KL + embed_weight·(NCE(P_s) + NCE(P_t))

after which both banks move towards the batch's embeddings:
M[i] <- normalize(m·M[i] + (1 - m)·u_i). Under DDP the update uses every rank's batch (all-gather),
so the banks stay identical on all ranks. Defaults: K 4096, τ 0.07, m 0.5, 128-d mocov2 projectors, T 4.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field

from trainables.losses import register_loss
from trainables.losses.base import LossInputs, all_gather_cat, all_reduce_mean, members_call
from trainables.losses.dapt import DaptLoss, DaptParams, ProjectorKind, feature_pair, make_projector

NCE_EPS = 1e-7


class CRDParams(DaptParams):
    embed_weight: float = Field(1.0, ge=0.0, description="λ2")
    projector: ProjectorKind = "mocov2"
    embed_dim: int = Field(128, ge=1)
    nce_k: int = Field(4096, ge=1, description="negatives per anchor")
    nce_t: float = Field(0.07, gt=0.0, description="temperature τ of the scores")
    nce_m: float = Field(0.5, ge=0.0, le=1.0, description="momentum of the memory update")


def nce_loss(scores: torch.Tensor, num_samples: int) -> torch.Tensor:
    """CRD's NCE loss on normalised scores (..., B, 1 + K), positive first: a per-anchor sum, batch
    mean; one value per leading index (the student's and the teacher's sides at once).

    log(P0 / (P0 + c)) + sum_k log(c' / (Pk + c)), c = K/n + eps and c' = K/n, summed over the
    anchors, is sum log P0 - sum over all 1 + K columns of log(P + c) + B K log c': the same value
    in two logs over the scores rather than two ratios and two logs per column."""
    b, k = scores.shape[-2], scores.shape[-1] - 1
    noise = k / num_samples
    total = (torch.log(scores[..., 0]).sum(-1) - torch.log(scores + (noise + NCE_EPS)).sum((-2, -1))
             + b * k * math.log(noise))
    return -total / b


def dense_is_smaller(n: int, batch: int, d: int, k: int) -> bool:
    """:meth:`CRD.dense_scores`'s rule: ~3 n D + 3 B n floats moved against ~3 B (1 + K) D."""
    return n * (3 * d + 3 * batch) < 3 * batch * (1 + k) * d


@torch.compiler.disable
def bank_snapshot(memory: torch.Tensor, rows: tuple | None = None) -> torch.Tensor:
    """The banks as the scores read them, kept for backward: a copy of ``memory`` (rows None), or
    the contrast rows gathered, ``memory[rows]`` (advanced indexing: a copy too); the memory
    update then overwrites ``memory`` in place.

    Always made eagerly, outside any compiled graph, which then takes it as an input: inside one,
    torch's min-cut partitioner may recompute the copy in backward from the banks themselves,
    after the update wrote them (silently wrong gradients: pytorch/pytorch#197039, open; seen in
    torch 2.14 with ``compile`` on a CRD trial, tests/test_compile_modes.py)."""
    return memory.clone() if rows is None else memory[rows]


# Bank rows per part of the dense scores' backward reduction on CUDA (:class:`ContrastDots`).
SPLIT_ROWS = 4096
MAX_SPLITS = 16


def reduction_parts(n: int, device: torch.device) -> int:
    """Parts of :class:`ContrastDots`'s backward reduction over n bank rows: on CUDA about
    SPLIT_ROWS rows each, at most MAX_SPLITS; one on a CPU, whose matmul keeps its cores busy over a
    long reduction, and where the parts' index arithmetic made the backward slower
    (bench/crd_scores.py --device cpu --parts 12 on the 2-core CPU, n 50,000, B 512: 1.43x the
    plain one)."""
    return max(1, min(n // SPLIT_ROWS, MAX_SPLITS)) if device.type == "cuda" else 1


class ContrastDots(torch.autograd.Function):
    """dots[..., b, j] = <anchors[..., b, :], bank[..., contrast[..., b, j], :]>, computed densely:
    the anchors against the whole bank (one matmul), then the contrast columns gathered.

    Backward, the anchors' gradient is sum_j g[b, j] bank[contrast[b, j]]: the gradients scattered
    into a (B, n) matrix that multiplies the bank. That matmul reduces over all n bank rows into a
    small (B, D) output, and cuBLAS ran it on few thread blocks: 1.8 ms of a CRD step's 2.9 ms over
    KD's on an H200 (fp32, B 512, n 50,000, D 128; bench/loss_steps.py --kernels, forward 0.34 ms).
    Here the n rows are split into :func:`reduction_parts` parts (the bank padded with zero rows to
    a whole number of parts), the scatter writes each part's columns as a matrix of its own, one
    batched matmul multiplies every part by its rows, and the parts' products are summed: the same
    sum, in parts, with many more blocks at work. The bank gets no gradient (it is a buffer)."""

    @staticmethod
    def forward(ctx, anchors: torch.Tensor, bank: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(bank, contrast)
        return torch.matmul(anchors, bank.transpose(-1, -2)).gather(-1, contrast)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        bank, contrast = ctx.saved_tensors
        *lead, n, d = bank.shape
        b, c = grad.shape[-2:]
        parts = reduction_parts(n, bank.device)
        if parts == 1:  # autograd's own backward
            return torch.matmul(grad.new_zeros(*grad.shape[:-1], n).scatter_add_(-1, contrast, grad), bank), None, None
        rows = -(-n // parts)  # per part; the last part's rows past n are zeros
        bank = bank.reshape(-1, n, d)
        if parts * rows != n:
            bank = torch.nn.functional.pad(bank, (0, 0, 0, parts * rows - n))
        part = torch.div(contrast, rows, rounding_mode="floor")
        anchor = torch.arange(b, device=grad.device).view(b, 1)
        # column j of anchor b lands at [part of j, b, j - its part's first row] of (parts, B, rows)
        flat = ((part * b + anchor) * rows + (contrast - part * rows)).reshape(len(bank), b * c)
        scattered = grad.new_zeros(len(bank), parts * b * rows).scatter_add_(1, flat, grad.reshape(len(bank), b * c))
        products = torch.bmm(scattered.view(-1, b, rows), bank.view(-1, rows, d))  # (S parts, B, D)
        return products.view(len(bank), parts, b, d).sum(1).view(*lead, b, d), None, None


@register_loss("crd", params=CRDParams)
class CRD(DaptLoss):
    """The two sides are stacked, side 0 the student's (its anchors u_s scored against the
    teacher's bank M_t) and side 1 the teacher's (u_t against M_s): banks, normalisers, scores
    and the NCE run once over both (one operation where the two sides took two; a small step
    on a GPU is launch-bound, bench/loss_steps.py)."""

    member_shape_params = ("projector", "embed_dim", "nce_k")

    def __init__(self, params: CRDParams, **context):
        super().__init__(params, **context)
        n = int(self.require(context, "num_samples"))
        labels = torch.as_tensor(self.require(context, "train_labels")).long().cpu()
        if labels.shape != (n,):
            raise ValueError(f"crd: train_labels has shape {tuple(labels.shape)}, expected ({n},)")
        counts = torch.bincount(labels)
        if int((counts > 0).sum()) < 2:
            raise ValueError("crd draws negatives from other classes, so it needs at least two classes")
        self.num_samples = n
        self.student_projector = make_projector(params.projector, self.require(context, "student_dim"),
                                                params.embed_dim)
        self.teacher_projector = make_projector(params.projector, self.require(context, "teacher_dim"),
                                                params.embed_dim)
        stdv = 1.0 / math.sqrt(params.embed_dim / 3.0)
        # memory[side]: the bank that side's anchors are scored against, (M_t, M_s)
        self.register_buffer("memory", torch.rand(2, n, params.embed_dim) * 2 * stdv - stdv)
        self.register_buffer("z", torch.full((2,), float("nan")))  # (Z_s, Z_t), set on the first batch
        # Sample positions grouped by class: negatives of class c are every position outside c's run
        # of the class order; per class, (start of its run, its size, samples outside it, that - 1).
        self.register_buffer("train_labels", labels, persistent=False)
        self.register_buffer("class_order", torch.argsort(labels, stable=True), persistent=False)
        start = torch.cumsum(counts, 0) - counts
        self.register_buffer("class_runs", torch.stack([start, counts, n - counts, n - counts - 1], 1),
                             persistent=False)
        # Whether Z is set, known on the host so the step does not sync to ask; unknown after a load.
        self._z_set: bool | None = False
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_z_set", None))

    # the banks and normalisers by name (views of the stacked buffers)
    memory_t = property(lambda self: self.memory[0])
    memory_s = property(lambda self: self.memory[1])
    z_s = property(lambda self: self.z[0])
    z_t = property(lambda self: self.z[1])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints written before the sides were stacked hold memory_s, memory_t, z_s, z_t."""
        if prefix + "memory_s" in state_dict:
            pop = lambda name: state_dict.pop(prefix + name)  # noqa: E731
            state_dict[prefix + "memory"] = torch.stack([pop("memory_t"), pop("memory_s")])
            state_dict[prefix + "z"] = torch.stack([pop("z_s"), pop("z_t")])
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def sample_negatives(self, anchor_labels: torch.Tensor, k: int) -> torch.Tensor:
        """(B, k) training-set indices, uniform with replacement over samples of other classes."""
        runs = self.class_runs[anchor_labels]
        start, count, n_other, last = (runs[:, i:i + 1] for i in range(4))
        r = (torch.rand(len(anchor_labels), k, device=runs.device) * n_other).long()
        r = torch.minimum(r, last)  # float rounding of rand * n can reach n
        r = r + (r >= start).long() * count
        return self.class_order[r]

    def dense_scores(self, batch: int) -> bool:
        """Score the anchors against the whole bank and pick the contrast set's columns, rather
        than gather the contrast set's bank rows, when that moves fewer bytes.

        Gathering writes and reads B (1 + K) D floats per bank and reads them again in backward
        (~3 B (1 + K) D); the dense path copies the bank (backward needs it as it was, and the
        memory update overwrites it in place; ~3 n D with the matmul's read) and writes, scatters
        and reads a (B, n) score matrix (~3 B n). With DAPT's CIFAR setting (B 64..512, K 4096, D 128,
        n 50,000) the dense path moves 10-40x less; with ImageNet's n (1.28 M) at a small batch,
        gathering does. Both compute the same dot products in fp32."""
        return dense_is_smaller(self.num_samples, batch, self.params.embed_dim, self.params.nce_k)

    @classmethod
    def state_bytes(cls, params: CRDParams, num_samples: int, batch_size: int) -> int:
        """The two fp32 banks, and a step's largest temporaries: the banks' copy and the (2, B, n)
        scores with their gradient (dense), or the (2, B, 1 + K, D) contrast rows twice (gathered)."""
        d, k, n, b = params.embed_dim, params.nce_k, num_samples, batch_size
        step = 2 * n * d + 4 * b * n if dense_is_smaller(n, b, d, k) else 4 * b * (1 + k) * d
        return 4 * (2 * n * d + step)

    def side_scores(self, anchors: torch.Tensor, contrast_idx: torch.Tensor) -> torch.Tensor:
        """Unnormalised exp-scores (2, B, 1 + K) of the anchors (2, B, D), (u_s, u_t), against
        their sides' banks."""
        dense = self.dense_scores(len(contrast_idx))
        bank = bank_snapshot(self.memory, None if dense else (slice(None), contrast_idx))
        if dense:
            dots = ContrastDots.apply(anchors, bank, contrast_idx.expand(2, -1, -1))
        else:
            dots = (bank @ anchors.unsqueeze(-1)).squeeze(-1)
        return torch.exp(dots / self.params.nce_t)

    @torch.no_grad()
    def update_memory(self, idx: torch.Tensor, u_s: torch.Tensor, u_t: torch.Tensor) -> None:
        """Each bank moves towards its own network's embeddings (M_t to u_t, M_s to u_s), over
        every rank's batch."""
        idx, u = all_gather_cat(idx), all_gather_cat(torch.stack([u_t, u_s], dim=1)).transpose(0, 1)
        m = self.params.nce_m
        self.memory.index_copy_(1, idx, torch.nn.functional.normalize(m * self.memory[:, idx] + (1 - m) * u, dim=-1))

    def extra_terms(self, inputs: LossInputs):
        if inputs.indices is None:
            raise ValueError("crd needs the batch's training-set indices")
        f_s, f_t = feature_pair(inputs)
        idx = inputs.indices.long()
        with torch.autocast(idx.device.type, enabled=False):  # exp(<.,.>/0.07) needs fp32 dot products
            u_s = self.student_projector(f_s).float()
            u_t = self.teacher_projector(f_t).float()
            contrast_idx = torch.cat([idx[:, None], self.sample_negatives(self.train_labels[idx],
                                                                          self.params.nce_k)], dim=1)
            scores = self.side_scores(torch.stack([u_s, u_t]), contrast_idx)
            if self._z_set is None:
                self._z_set = not bool(torch.isnan(self.z).any())
            if not self._z_set:
                self.z.copy_(all_reduce_mean(scores.detach().mean((1, 2))) * self.num_samples)
                self._z_set = True
            nce = nce_loss(scores / self.z.view(2, 1, 1), self.num_samples)
            self.update_memory(idx, u_s.detach(), u_t.detach())
        crd = nce.sum()
        nce_s, nce_t = nce.detach().unbind(0)
        return self.params.embed_weight * crd, {"crd": crd, "nce_s": nce_s, "nce_t": nce_t}

    @classmethod
    def extra_members(cls, losses, inputs, stacked, columns):
        """K members at once: banks (K, 2, n, D) and normalisers (K, 2) stacked, each member's own
        negatives, temperature and memory momentum; scored, normalised and updated as one."""
        if inputs.indices is None:
            raise ValueError("crd needs the batch's training-set indices")
        first, (_, buffers) = losses[0], stacked
        memory, z = buffers["memory"], buffers["z"]
        f_s, f_t = feature_pair(inputs)
        idx = inputs.indices.long()
        k, b, n = len(losses), len(idx), first.num_samples
        with torch.autocast(idx.device.type, enabled=False):
            u_s = members_call(first.student_projector, stacked, "student_projector", f_s).float()
            u_t = members_call(first.teacher_projector, stacked, "teacher_projector", f_t, batched=False).float()
            negatives = first.sample_negatives(first.train_labels[idx].repeat(k), first.params.nce_k).view(k, b, -1)
            contrast = torch.cat([idx.view(1, b, 1).expand(k, b, 1), negatives], dim=2)  # (K, B, 1 + nce_k)
            anchors = torch.stack([u_s, u_t], dim=1)  # (K, 2, B, D)
            if first.dense_scores(b):
                dots = ContrastDots.apply(anchors, bank_snapshot(memory), contrast.unsqueeze(1).expand(k, 2, b, -1))
            else:
                member, side = torch.arange(k, device=idx.device), torch.arange(2, device=idx.device)
                rows = bank_snapshot(memory, (member.view(k, 1, 1, 1), side.view(1, 2, 1, 1), contrast.unsqueeze(1)))
                dots = (rows @ anchors.unsqueeze(-1)).squeeze(-1)
            scores = torch.exp(dots / columns("nce_t").view(k, 1, 1, 1))
            if not all(loss._z_set for loss in losses):
                # members' normalisers not yet set (the first batch, or unknown after a load) are
                # set from this batch; a set one stays, and the host never reads which
                fresh = all_reduce_mean(scores.detach().mean((2, 3))) * n
                z.copy_(torch.where(torch.isnan(z), fresh, z))
                for loss in losses:
                    loss._z_set = True
            nce = nce_loss(scores / z.view(k, 2, 1, 1), n)  # (K, 2)
            with torch.no_grad():  # each bank towards its own network's embeddings, over every rank's batch
                idx_all = all_gather_cat(idx)
                u = all_gather_cat(torch.stack([u_t, u_s], dim=2).detach().transpose(0, 1)).permute(1, 2, 0, 3)
                m = columns("nce_m").view(k, 1, 1, 1)
                memory.index_copy_(2, idx_all, torch.nn.functional.normalize(m * memory[:, :, idx_all] + (1 - m) * u,
                                                                              dim=-1))
        crd = nce.sum(-1)
        return columns("embed_weight") * crd, {"crd": crd, "nce_s": nce[:, 0], "nce_t": nce[:, 1]}
