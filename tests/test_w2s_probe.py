"""The w2s_probe trainable without Ray: cached features (a second sweep runs no model forward
pass), vectorised trials equal to one-config trials, splits as the seed makes them, bad params."""
import math

import numpy as np
import pytest
import torch

from orchestrator.store.feature_store import FeatureStore
from trainables.runtime.session import LocalSession
from trainables.runtime.trainable import TrialContext
from trainables.runtime.vectorize import single_config
from trainables.w2s_probe.features import make_splits
from trainables.w2s_probe.loop import run_w2s_probe
from trainables.w2s_probe.params import PROBE_FIELDS, W2SProbeParams
from trainables.w2s_probe.prepare import prepare_w2s

FAST = {"dataset": "digits", "pretrain_split": {"weak": 0.06, "strong": 0.3},
        "weak": {"model": "linear", "train": {"epochs": 2, "lr": 0.05}},
        "strong": {"model": "mlp", "train": {"epochs": 3, "lr": 0.05}},
        "n_val": 0.2, "batch_size": 50, "epochs": 3, "lr": 1e-2}


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("w2s_cache"))


class ForwardCounter:
    """Counts every nn.Module call in the process (teacher, backbone or anything else)."""

    def __enter__(self):
        self.calls = 0

        def hook(module, args):
            self.calls += 1

        self.handle = torch.nn.modules.module.register_module_forward_pre_hook(hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def run(params: dict, root: str):
    session = LocalSession(torch.device("cpu"))
    final = run_w2s_probe(W2SProbeParams.model_validate(params), session, TrialContext(artifacts=FeatureStore(root)))
    return final, session


def test_a_second_sweep_over_the_same_data_runs_no_forward_pass(cache_root):
    with ForwardCounter() as first:
        prepared = prepare_w2s(FAST, set(), TrialContext(artifacts=FeatureStore(cache_root)))
    assert prepared["feature_passes"] == 2 and prepared["model_trainings"] == 2
    assert not prepared["weak_cache_hit"] and not prepared["strong_cache_hit"]
    assert first.calls > 0
    # The next sweep: new store objects (new processes, maybe other nodes), the same storage.
    with ForwardCounter() as second:
        again = prepare_w2s(FAST, set(), TrialContext(artifacts=FeatureStore(cache_root)))
        final, _ = run(FAST, cache_root)
    assert second.calls == 0
    assert again["feature_passes"] == 0 and again["weak_cache_hit"] and again["strong_cache_hit"]
    assert final["feature_passes"] == 0 and final["model_trainings"] == 0 and final["feature_cache_hits"] == 2
    assert (again["weak_key"], again["strong_key"]) == (prepared["weak_key"], prepared["strong_key"])


def test_a_changed_recipe_recomputes_only_what_it_changes(cache_root):
    prepare_w2s(FAST, set(), TrialContext(artifacts=FeatureStore(cache_root)))
    changed = {**FAST, "strong": {"model": "mlp", "train": {"epochs": 4, "lr": 0.05}}}
    info = prepare_w2s(changed, set(), TrialContext(artifacts=FeatureStore(cache_root)))
    assert info["weak_cache_hit"] and not info["strong_cache_hit"]
    assert info["feature_passes"] == 1 and info["model_trainings"] == 1
    # A searched strong model is left to the trials; the fixed weak teacher is still made up front.
    assert set(prepare_w2s(FAST, {"strong"}, TrialContext(artifacts=FeatureStore(cache_root)))) >= {"weak_key"}
    assert prepare_w2s(FAST, {"split_seed"}, TrialContext(artifacts=FeatureStore(cache_root))) is None


def test_every_epoch_reports_weak_w2s_strong_and_pgr(cache_root):
    final, session = run(FAST, cache_root)
    assert [h["epoch"] for h in session.history] == [1, 2, 3]
    for key in ("weak_acc", "w2s_acc", "strong_acc", "agreement", "val_weak_acc", "val_w2s_acc", "val_strong_acc"):
        assert 0.0 <= final[key] <= 1.0, key
    gap = final["strong_acc"] - final["weak_acc"]
    expected = (final["w2s_acc"] - final["weak_acc"]) / gap if gap > 0 else math.nan
    assert final["pgr"] == pytest.approx(expected, nan_ok=True)
    assert final["gap"] == pytest.approx(gap)
    assert final["probes_trained"] == 2 and final["n_test"] > 0


def test_a_vectorised_trial_equals_one_config_trials(cache_root):
    vectorised = {**FAST, "vectorize": 2, "w2s_loss": "auxconf", "probes": [{"lr": 1e-2}, {"lr": 3e-2, "epochs": 2}],
                  "probe_grid": {"w2s_labels": ["soft", "hard"], "loss_params.aux_coef": [0.0, 0.5]}}
    final, session = run(vectorised, cache_root)
    per_config = final["probes"]
    assert len(per_config) == 8 and final["probe_configs"] == 8
    assert final["probes_trained"] == 8 + 2  # 8 W2S probes, and one ceiling per (lr, epochs)
    assert [m["epoch"] for m in per_config] == [3, 3, 3, 3, 2, 2, 2, 2]
    assert final["w2s_acc"] == max(m["w2s_acc"] for m in per_config)  # the trial level: best over configs
    for k in (1, 6):
        config = single_config(W2SProbeParams.model_validate(vectorised).model_dump(), PROBE_FIELDS, k)
        alone, _ = run(config, cache_root)
        for key in ("weak_acc", "w2s_acc", "strong_acc", "agreement", "val_w2s_acc", "epoch"):
            assert per_config[k][key] == pytest.approx(alone[key]), (k, key)
        assert per_config[k]["w2s_train_loss"] == pytest.approx(alone["w2s_train_loss"], rel=1e-5)
        assert per_config[k]["pgr"] == pytest.approx(alone["pgr"], nan_ok=True)


def test_splits_are_disjoint_and_follow_the_seed_permutation():
    labels = np.repeat(np.arange(10), 50)
    p = W2SProbeParams.model_validate({**FAST, "n_train": 0.8, "n_val": 0.1})
    s = make_splits(labels, p)
    parts = [s.weak, s.strong, s.train, s.val, s.test]
    assert sum(map(len, parts)) == 500 and len(np.unique(np.concatenate(parts))) == 500
    assert len(s.weak) == 30 and len(s.strong) == 150  # stratified 6% and 30%
    # With nothing trained here the pool is the whole dataset, permuted and cut as the seed does.
    seed = W2SProbeParams.model_validate({**FAST, "pretrain_split": {"weak": 0, "strong": 0}, "n_train": 400,
                                          "n_val": 0, "split_seed": 3,
                                          "weak": {"model": "linear"}, "strong": {"model": "mlp"}})
    s = make_splits(labels, seed)
    order = np.arange(500)
    np.random.default_rng(3).shuffle(order)
    np.testing.assert_array_equal(s.train, order[:400])
    np.testing.assert_array_equal(s.test, order[400:])


@pytest.mark.parametrize("change,message", [
    ({"pretrain_split": {"weak": 0.0, "strong": 0.3}}, "pretrain_split.weak"),
    ({"dataset": "nope"}, "unknown dataset"),
    ({"dataset": "imagenet"}, "dataset_kwargs.data_root"),
    ({"w2s_loss": "auxconf", "loss_params": {"temperature": 2}}, "loss_params.temperature"),
    ({"vectorize": 2, "probes": [{"lr": -1.0}]}, "probe configuration 0: lr"),
])
def test_bad_params_are_named(change, message):
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        W2SProbeParams.model_validate({**FAST, **change})


def test_a_missing_image_folder_is_a_clear_error(tmp_path):
    from trainables.data import DatasetUnavailable

    params = {"dataset": "imagenet", "dataset_kwargs": {"data_root": str(tmp_path / "imagenet"), "split": "val"},
              "pretrain_split": {"weak": 0, "strong": 0}, "weak": {"model": "linear"}, "strong": {"model": "mlp"}}
    with pytest.raises(DatasetUnavailable, match=r"no images under .*imagenet/val/<class>/ and no "
                                                 r"ILSVRC2012_devkit_t12\.tar\.gz"):
        prepare_w2s(params, set(), TrialContext(artifacts=FeatureStore(str(tmp_path / "cache"))))
