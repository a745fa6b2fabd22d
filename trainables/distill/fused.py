"""The fused ``distill`` trial (``vectorize: K``): K students of one architecture, each with its
own lr, weight decay, momentum, loss parameters and seed, trained together on the same batches and
the same cached teacher outputs (:mod:`trainables.training.fused`). Each member is built exactly as
its stand-alone trial builds its student and loss, so member k equals that trial."""
from __future__ import annotations

from typing import Any

from trainables.distill.loop import (batch_augment_of, load_data, load_teacher, optim_config, static_metrics,
                                     student_and_loss, student_views, teacher_signal)
from trainables.distill.params import DistillParams
from trainables.losses import loss_class
from trainables.runtime.engine import seed_everything
from trainables.runtime.member_stops import stops_reader
from trainables.runtime.session import Session
from trainables.runtime.trainable import TrialContext
from trainables.training.fused import Member, train_fused


def run_distill_fused(p: DistillParams, session: Session, ctx: TrialContext) -> dict[str, Any]:
    members_p = p.member_params()
    first = members_p[0]  # the data seed: batch order, views and per-step augmentation
    device = session.device
    entry = load_teacher(first, ctx)
    data = load_data(first, ctx).to(device)
    seed_everything(first.seed)
    teacher, teacher_context = teacher_signal(first, ctx, entry, data, loss_class(first.loss), device)
    members = []
    for mp in members_p:
        student, loss_fn = student_and_loss(mp, data, entry, teacher_context)
        members.append(Member(student, loss_fn, optim_config(mp)))
    return train_fused(
        members=members, data=data, session=session, seed=first.seed, teacher=teacher,
        checkpoint_every=ctx.checkpoint_every, static_metrics=static_metrics(first, entry, data),
        views=student_views(first, data, device),
        batch_augment=batch_augment_of(first, data.mean, data.std, data.num_classes, first.seed),
        mode=p.fused_forward, stops=stops_reader(ctx.sweep_name) if ctx.sweep_name else None)
