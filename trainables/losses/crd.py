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
from trainables.losses.base import LossInputs, all_gather_cat, all_reduce_mean
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
    """CRD's NCE loss on normalised scores (B, 1 + K), positive first: a per-anchor sum, batch mean."""
    k = scores.shape[1] - 1
    noise = k / num_samples
    log_pos = torch.log(scores[:, 0] / (scores[:, 0] + noise + NCE_EPS))
    log_neg = torch.log(noise / (scores[:, 1:] + noise + NCE_EPS))
    return -(log_pos.sum() + log_neg.sum()) / scores.shape[0]


@register_loss("crd", params=CRDParams)
class CRD(DaptLoss):
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
        self.register_buffer("memory_s", torch.rand(n, params.embed_dim) * 2 * stdv - stdv)
        self.register_buffer("memory_t", torch.rand(n, params.embed_dim) * 2 * stdv - stdv)
        self.register_buffer("z_s", torch.tensor(float("nan")))  # set on the first batch
        self.register_buffer("z_t", torch.tensor(float("nan")))
        # Sample positions grouped by class: negatives of class c are every position outside c's run.
        self.register_buffer("train_labels", labels, persistent=False)
        self.register_buffer("class_order", torch.argsort(labels, stable=True), persistent=False)
        self.register_buffer("class_count", counts, persistent=False)
        self.register_buffer("class_start", torch.cumsum(counts, 0) - counts, persistent=False)
        # Whether Z is set, known on the host so the step does not sync to ask; unknown after a load.
        self._z_set: bool | None = False
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "_z_set", None))

    def sample_negatives(self, anchor_labels: torch.Tensor, k: int) -> torch.Tensor:
        """(B, k) training-set indices, uniform with replacement over samples of other classes."""
        count = self.class_count[anchor_labels][:, None]
        start = self.class_start[anchor_labels][:, None]
        n_other = self.num_samples - count
        r = (torch.rand(len(anchor_labels), k, device=count.device) * n_other).long()
        r = torch.minimum(r, n_other - 1)  # float rounding of rand * n can reach n
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
        d, k = self.params.embed_dim, self.params.nce_k
        return self.num_samples * (3 * d + 3 * batch) < 3 * batch * (1 + k) * d

    def contrast_scores(self, u_s: torch.Tensor, u_t: torch.Tensor, contrast_idx: torch.Tensor):
        """Unnormalised exp-scores (B, 1 + K) for the student and the teacher anchors."""
        tau = self.params.nce_t
        if self.dense_scores(len(contrast_idx)):
            dots_t = (u_t @ self.memory_s.clone().T).gather(1, contrast_idx)
            dots_s = (u_s @ self.memory_t.clone().T).gather(1, contrast_idx)
        else:
            dots_t = torch.bmm(self.memory_s[contrast_idx], u_t[:, :, None]).squeeze(-1)
            dots_s = torch.bmm(self.memory_t[contrast_idx], u_s[:, :, None]).squeeze(-1)
        return torch.exp(dots_s / tau), torch.exp(dots_t / tau)

    @torch.no_grad()
    def update_memory(self, idx: torch.Tensor, u_s: torch.Tensor, u_t: torch.Tensor) -> None:
        idx, u_s, u_t = all_gather_cat(idx), all_gather_cat(u_s), all_gather_cat(u_t)
        m = self.params.nce_m
        for bank, u in ((self.memory_s, u_s), (self.memory_t, u_t)):
            bank.index_copy_(0, idx, torch.nn.functional.normalize(m * bank[idx] + (1 - m) * u, dim=1))

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
            scores_s, scores_t = self.contrast_scores(u_s, u_t, contrast_idx)
            if self._z_set is None:
                self._z_set = not bool(torch.isnan(self.z_s))
            if not self._z_set:
                self.z_s.copy_(all_reduce_mean(scores_s.detach().mean()) * self.num_samples)
                self.z_t.copy_(all_reduce_mean(scores_t.detach().mean()) * self.num_samples)
                self._z_set = True
            nce_s = nce_loss(scores_s / self.z_s, self.num_samples)
            nce_t = nce_loss(scores_t / self.z_t, self.num_samples)
            self.update_memory(idx, u_s.detach(), u_t.detach())
        crd = nce_s + nce_t
        return self.params.embed_weight * crd, {"crd": crd, "nce_s": nce_s, "nce_t": nce_t}
