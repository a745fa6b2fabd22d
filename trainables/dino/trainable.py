"""``dino``: DINO self-distillation with switchable ingredients, after "Random Teachers are Good
Teachers" (Sarnthein et al., ICML 2023; safelix/dinopl).

A student and a teacher, each an encoder from the model registry followed by a DINO head, see
multi-crop views of unlabelled images; the student learns to match the teacher's centred,
sharpened head outputs with the registered ``dino`` loss (:mod:`trainables.losses.dino`). The
teacher is updated by EMA of the student (``ema``), copied from the student every few epochs
(``prev_epoch``) or never (``no_update``: the random teacher). Every ``probe_every`` epochs the
student's encoder features (not the head's) are probed with a kNN classifier and a linear probe;
the teacher's own features are probed once at the start, so a sweep shows whether distillation
improved on them.

The family's folder: its parameters (:mod:`trainables.dino.params`), the networks
(:mod:`trainables.dino.model`), the multi-crop views (:mod:`trainables.dino.crops`), the kNN and
linear probes (:mod:`trainables.dino.probes`), the training loop (:mod:`trainables.dino.loop`), the
driver-side preparation (:mod:`trainables.dino.prepare`), and here its entry (one pair, or K fused:
:mod:`trainables.dino.fused`) and registration: metrics and report vocabulary.
"""
from __future__ import annotations

from typing import Any

from trainables.data import load_dataset
from trainables.dino.fused import train_dino_fused
from trainables.dino.loop import train_dino
from trainables.dino.params import MEMBER_FIELDS, DinoParams
from trainables.dino.prepare import check_dino_inputs, prepare_dino
from trainables.dino.report import PLOTS as DINO_PLOTS, dino_headline
from trainables.runtime.session import Session
from trainables.runtime.trainable import TrialContext, register_trainable
from trainables.training.dataset_params import dataset_digest
from trainables.runtime.vocabulary import Vocabulary


def run_dino(p: DinoParams, session: Session, ctx: TrialContext) -> dict[str, Any]:
    """A dino trial on its dataset: K (student, teacher) pairs fused when ``vectorize`` is set
    (:mod:`trainables.dino.fused`), one pair otherwise (:mod:`trainables.dino.loop`)."""
    data = load_dataset(p.dataset, seed=p.split_seed, **p.dataset_kwargs).to(session.device)
    if p.is_fused:
        return train_dino_fused(p, data, session, ctx)
    return train_dino(p, data, session, checkpoint_every=ctx.checkpoint_every)


register_trainable(
    "dino",
    params=DinoParams,
    metric="knn_acc",
    mode="max",
    description="DINO self-distillation (ema / prev_epoch / random no_update teacher) with kNN and linear probes.",
    prepare=prepare_dino,
    check_available=check_dino_inputs,
    # vectorize: K fuses K (student, teacher) pairs per trial (trainables/dino/fused.py); ASHA judges each member.
    vectorized_keys=MEMBER_FIELDS,
    stops_members=True,
    metrics_doc={
        "knn_acc": "kNN accuracy (knn_metric: cosine or l2) of the student's raw encoder features on the "
                   "validation split, at the latest probe (every probe_every epochs, the last epoch, and "
                   "before training)",
        "test_knn_acc": "the same on the test split",
        "linear_acc": "linear-probe accuracy of the student's raw encoder features on the validation split",
        "test_linear_acc": "the same on the test split",
        "knn_acc_normalized": "kNN accuracy on train-standardised features (probe_normalized; and "
                              "test_knn_acc_normalized)",
        "linear_acc_normalized": "linear-probe accuracy on train-standardised features (probe_normalized; and "
                                 "test_linear_acc_normalized)",
        "teacher_knn_acc": "kNN accuracy of the teacher's features at the start (the random teacher's own)",
        "teacher_linear_acc": "linear-probe accuracy of the teacher's features at the start (and teacher_ "
                              "versions of every probe metric)",
        "train_loss": "mean DINO loss of the epoch (the objective; and train_ce, train_kl, entropies, "
                      "train_teacher_temp, train_mse with objective mse)",
    },
    data_digest=dataset_digest,
    # the random teacher is probed once, before training: its probe metrics are constants of the trial
    static_metrics=tuple(f"teacher_{split}{probe}_acc{norm}" for split in ("", "test_") for probe in ("knn", "linear")
                         for norm in ("", "_normalized")),
    vocabulary=Vocabulary(
        headline="knn_acc",
        table_metrics=("test_knn_acc", "linear_acc", "test_linear_acc", "teacher_knn_acc"),
        curves=("knn_acc",),
        loss_curves=("train_loss",),
        plots=DINO_PLOTS,  # accuracy against student_init_alpha / n_samples over teacher seeds
        headline_figure=dino_headline,  # the student against its random teacher, kNN and linear, val and test
    ),
)(run_dino)
