"""``distill``: train (or reuse) a teacher, then train a student with a distillation loss.

The family's folder: its parameters (:mod:`trainables.distill.params`), the trial loop with the
teacher's cached signal (:mod:`trainables.distill.loop`), the driver-side preparation that trains
the teacher once (:mod:`trainables.distill.prepare`), and here its entry (one student, or K fused:
:mod:`trainables.distill.fused`) and registration: metrics, control and report vocabulary. How the
teacher gets its weights (scratch, linear probe, fine-tune, pretrained) is in
:mod:`trainables.distill.teacher`; how the student starts (``student_init``) in :mod:`trainables.init`.
"""
from __future__ import annotations

from typing import Any

from trainables.distill.fused import run_distill_fused
from trainables.distill.loop import run_student
from trainables.distill.params import MEMBER_FIELDS, DistillParams, shared_member_keys
from trainables.distill.prepare import check_distill_inputs, prepare_distill
from trainables.distill.report import distill_headline
from trainables.runtime.session import Session
from trainables.runtime.trainable import TrialContext, register_trainable
from trainables.training.dataset_params import dataset_digest
from trainables.runtime.vocabulary import Vocabulary


def run_distill(p: DistillParams, session: Session, ctx: TrialContext) -> dict[str, Any]:
    """A distill trial: K students fused when ``vectorize`` is set (:mod:`trainables.distill.fused`),
    one student otherwise (:mod:`trainables.distill.loop`)."""
    return (run_distill_fused if p.is_fused else run_student)(p, session, ctx)


def distill_control(config: dict[str, Any]) -> dict[str, Any]:
    """Same budget and hyperparameters, no teacher: plain cross-entropy on the labels (in the
    few-shot meta stage too, whose loss overrides belong to the distillation loss)."""
    overrides: dict[str, Any] = {"loss": "ce", "loss_params": {}}
    if config.get("fewshot"):
        overrides["fewshot"] = {**config["fewshot"], "meta_loss_params": {}}
    return overrides


register_trainable(
    "distill",
    params=DistillParams,
    metric="val_acc",
    mode="max",
    description="Teacher (trained once, cached) to student distillation with a registered loss.",
    prepare=prepare_distill,
    control_overrides=distill_control,
    check_available=check_distill_inputs,
    # vectorize: K fuses K students per trial (trainables/distill/fused.py); ASHA judges each member.
    vectorized_keys=MEMBER_FIELDS,
    shared_member_keys=shared_member_keys,
    stops_members=True,
    metrics_doc={
        "val_acc": "student top-1 on the validation split (last epoch)",
        "test_acc": "student top-1 on the test split (last epoch)",
        "best_val_acc": "best validation top-1 so far",
        "test_acc_at_best_val": "test top-1 at the epoch of best validation accuracy",
        "teacher_test_acc": "the teacher's test top-1",
        "train_loss": "mean training loss of the epoch (and train_<component> for each loss term)",
        "val_top5": "student top-5 on the validation split (more than 5 classes only)",
        "test_top5": "student top-5 on the test split (more than 5 classes only)",
        "ema_val_acc": "top-1 of the student's weight EMA on the validation split (with ema_decay)",
        "ema_test_acc": "top-1 of the student's weight EMA on the test split (with ema_decay)",
        **{f"fewshot_{k}shot_{m}": f"{what} of {k}-shot episodes on the novel classes (with fewshot; after the "
           f"meta stage when there is one)" for k in (1, 5) for m, what in (("acc", "mean accuracy"),
                                                                          ("ci95", "95% confidence interval"))},
        **{f"fewshot_classifier_{k}shot_acc": f"{k}-shot accuracy of the Classifier-Baseline, before the meta "
           f"stage (with fewshot.meta_epochs)" for k in (1, 5)},
        "fewshot_epoch": "the epoch the reported few-shot metrics were measured after (with fewshot.every > 1)",
        "meta_train_loss": "mean episode loss of the last meta epoch (with fewshot.meta_epochs)",
        "meta_temperature": "Meta-Baseline's learnt temperature (with fewshot.meta_epochs)",
        "label_noise_rate": "fraction of training labels that label_noise changed (val / test labels stay clean)",
        "selcl_selected": "training examples the student's Sel-CL stage selected, which it trains on (student_init selcl)",
        "selcl_selected_precision": "share of those whose noisy label is the true one (student_init selcl with "
                                    "label_noise)",
        "selcl_clean_recall": "share of the correctly labelled training examples the stage selected (student_init "
                              "selcl with label_noise)",
    },
    # classifier_loop's static_metrics, as loop.py passes them.
    data_digest=dataset_digest,
    static_metrics=("teacher_test_acc", "teacher_val_acc", "label_noise_rate", "selcl_selected",
                    "selcl_selected_precision", "selcl_clean_recall"),
    vocabulary=Vocabulary(
        headline="test_acc",
        table_metrics=("test_acc", "teacher_test_acc", "label_noise_rate", "selcl_selected_precision"),
        reference_metric="test_acc",
        control="its no-teacher control",
        identity={"teacher": ("teacher.model", "teacher"), "student": ("student.model", "student"),
                  "method": ("method", "loss"),
                  # Noisy-label sweeps: one summary line per method x noise setting (absent, so no
                  # column, when a space sets no label_noise).
                  "noise": ("label_noise.kind",), "noise rate": ("label_noise.rate",)},
        summary_metrics=("fewshot_1shot_acc", "fewshot_5shot_acc"),
        curves=("val_acc", "test_acc"),
        loss_curves=("train_loss", "val_loss"),
        per_worker_batch="batch_size",
        headline_figure=distill_headline,  # teacher, best student, no-teacher control over seeds
    ),
)(run_distill)
