"""``w2s_probe``: weak-to-strong generalisation with linear probes on cached embeddings
(openai/weak-to-strong ``vision/``, spec sections 0 and 1 of the methods reference).

A weak teacher labels the probe pool; a linear probe on a frozen strong backbone's embeddings is
trained (a) on the weak labels, giving the W2S accuracy, and (b) on the ground truth, giving the
strong ceiling, with identical hyperparameters. Both are scored on the same test split as the
weak teacher, and

    PGR = (w2s_acc - weak_acc) / (strong_acc - weak_acc)          (NaN when strong_acc <= weak_acc)

The seed protocol is the default: soft-label cross-entropy against the teacher's softmax, Adam
(lr 1e-3, no weight decay), batch 100, per-step cosine to 0, 10 epochs, last-epoch numbers.
Options: hard weak labels (``w2s_labels: hard``) and the auxiliary-confidence loss
(``w2s_loss: auxconf``). Weak logits and embeddings come from the feature store (computed once per
recipe, see :mod:`trainables.w2s_probe.features`); a trial never runs a model forward pass on a cache hit.
``resources.workers: N`` shards that feature pass N ways over Ray Train workers (a device each),
assembled in order into the same tables; every probe trial trains on one device (``sharded_prepare``).

The family's folder: its parameters (:mod:`trainables.w2s_probe.params`), the probe-training trial
(:mod:`trainables.w2s_probe.loop`), the driver-side feature pass (:mod:`trainables.w2s_probe.prepare`,
over :mod:`trainables.w2s_probe.features`), its report hooks (:mod:`trainables.w2s_probe.report`), and
here its registration: metrics and report vocabulary.
"""
from __future__ import annotations

from trainables.runtime.trainable import register_trainable
from trainables.training.dataset_params import dataset_digest
from trainables.runtime.vocabulary import Vocabulary
from trainables.w2s_probe.loop import STATIC_METRICS, run_w2s_probe
from trainables.w2s_probe.params import PROBE_FIELDS, W2SProbeParams
from trainables.w2s_probe.prepare import check_w2s_inputs, prepare_w2s
from trainables.w2s_probe.report import PLOTS as W2S_PLOTS, W2S_COLUMNS, pgr_summary, w2s_headline


def _metric_docs() -> dict[str, str]:
    docs = {
        "weak_acc": "the weak teacher's top-1 on the probe test split",
        "w2s_acc": "top-1 of the probe trained on weak labels (last epoch, test split)",
        "strong_acc": "top-1 of the probe trained on ground truth: the strong ceiling (test split)",
        "pgr": "(w2s_acc - weak_acc) / (strong_acc - weak_acc); NaN when strong_acc <= weak_acc",
        "gap": "strong_acc - weak_acc, PGR's denominator",
        "agreement": "how often the W2S probe agrees with the weak teacher's top-1 (test split)",
    }
    docs.update({f"val_{k}": f"{v.split(' (')[0]} on the validation split (n_val > 0)" for k, v in docs.items()})
    docs.update({
        "w2s_train_loss": "mean training loss of the W2S probe in the epoch",
        "strong_train_loss": "mean training loss of the ceiling probe in the epoch",
        "weak_acc_all": "the weak teacher's top-1 over the whole dataset (the seed's printed number)",
        "n_train": "probe training samples", "n_val": "validation samples", "n_test": "test samples",
        "feature_passes": "weak / strong forward passes this trial ran (0 on a feature-cache hit)",
        "model_trainings": "weak / strong models this trial trained (0 on a cache hit)",
        "feature_cache_hits": "how many of the two feature tables were already cached",
        "probe_configs": "probe configurations in the trial", "probes_trained": "distinct probes trained",
    })
    return docs


register_trainable(
    "w2s_probe",
    params=W2SProbeParams,
    metric="w2s_acc",
    mode="max",
    description="Weak-to-strong linear probes on cached embeddings: weak, W2S and strong accuracy and PGR.",
    prepare=prepare_w2s,
    check_available=check_w2s_inputs,
    sharded_prepare="weak logits / strong embeddings feature pass",
    vectorized_keys=PROBE_FIELDS,
    metrics_doc=_metric_docs(),
    data_digest=dataset_digest,
    static_metrics=STATIC_METRICS,
    vocabulary=Vocabulary(
        headline="w2s_acc",
        table_metrics=W2S_COLUMNS,
        # The weak model teaches the strong one: the summary's teacher and student columns.
        identity={"teacher": ("weak.model", "weak", "weak_model"), "student": ("strong.model", "strong", "strong_model")},
        curves=("w2s_acc",),
        plots=W2S_PLOTS,
        headline_figure=w2s_headline,  # weak, W2S and strong per method, PGR with its interval
        summary=pgr_summary,
    ),
)(run_w2s_probe)
