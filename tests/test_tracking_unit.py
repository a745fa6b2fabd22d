import pytest

from orchestrator.errors import UserError
from orchestrator.store.tracking import check_tracking_uri, normalise_tracking_uri


def test_uris_are_made_absolute(tmp_path):
    assert normalise_tracking_uri(None, str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
    assert normalise_tracking_uri("sqlite:///rel.db", str(tmp_path)) == f"sqlite:///{tmp_path}/rel.db"
    assert normalise_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"


def test_file_store_is_refused_with_advice():
    with pytest.raises(UserError, match="use an sqlite:///path/to/mlflow.db file or an http"):
        normalise_tracking_uri("./mlruns")


def test_unreachable_server_fails_fast():
    with pytest.raises(UserError, match=r"the MLflow server at http://127.0.0.1:9 is unreachable"):
        check_tracking_uri("http://127.0.0.1:9", timeout_s=2)


def test_missing_sqlite_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        check_tracking_uri(f"sqlite:///{tmp_path}/nope/mlflow.db")


class _Trial:
    def __init__(self, trial_id, config):
        self.trial_id, self.config, self.status, self.last_result = trial_id, config, "RUNNING", {}


def test_child_runs_are_named_by_trial_and_values_and_carry_the_resolved_config(tmp_path):
    """Issue 19: a child's name tells it apart in the runs list; it holds every parameter the
    trial ran (the trainable's defaults too); constants are params, not per-epoch metrics; the
    epoch is each point's step, not a metric; the parent holds the spec as artifacts, not params."""
    from orchestrator.space.spec import parse_spec
    from orchestrator.store.tracking import (NOTE_TAG, RESOLVED_CONFIG_FILE, MLflowTrialCallback, Tracker,
                                             complete_params, flatten)
    from trainables.runtime.trainable import get_trainable

    spec = parse_spec("name: rec\ndescription: what this sweep asks\ntrainable: distill\n"
                      "params: {student: mlp_tiny, epochs: 3}\nsearch:\n  lr: {loguniform: [0.001, 0.1]}\n"
                      "  loss_params.temperature: {choice: [2.0, 4.0]}\n", "rec.yaml")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = Tracker(uri, spec.experiment_name)
    tracker.ensure_experiment()
    parent, _ = tracker.parent_run("rec", spec.resolved_dict(), "name: rec\n", tags={"w2s.dataset_digest": "abc"})
    static = get_trainable("distill").static_metrics
    cb = MLflowTrialCallback(uri, spec.experiment_name, parent, "rec", "epochs", keys=("lr", "loss_params.temperature"),
                             static=static, trainable="distill")
    config = {**spec.fixed_config(), "lr": 0.0456, "loss_params": {"temperature": 4.0}}
    trial = _Trial("ab12c_00004", config)
    cb.on_trial_start(0, [trial], trial)
    constant = static[0]
    for epoch in (1, 2, 3):
        cb.on_trial_result(0, [trial], trial, {"epoch": epoch, "val_acc": 0.1 * epoch, constant: 0.5,
                                                "time_total_s": float(epoch)})
    cb.on_trial_complete(0, [trial], trial)

    child = tracker.find_runs(**{"w2s.trial_id": trial.trial_id})[0]
    assert child.info.run_name == "t04 lr=0.0456 temperature=4"
    expected = {k: v for k, v in flatten(complete_params("distill", config)).items()}
    assert set(expected) <= set(child.data.params) and len(expected) > len(config)
    assert child.data.params[f"static.{constant}"] == "0.5" and constant not in child.data.metrics
    assert "epoch" not in child.data.metrics
    assert [m.step for m in tracker.client.get_metric_history(child.info.run_id, "val_acc")] == [1, 2, 3]
    names = [a.path for a in tracker.client.list_artifacts(child.info.run_id)]
    assert RESOLVED_CONFIG_FILE in names

    parent_run = tracker.client.get_run(parent)
    assert not any(k.startswith(("spec.", "best.")) for k in parent_run.data.params)
    assert parent_run.data.tags[NOTE_TAG] == "what this sweep asks"
    assert parent_run.data.tags["w2s.dataset_digest"] == "abc"
    assert "spec" in [a.path for a in tracker.client.list_artifacts(parent)]


def test_dataset_digest_follows_the_data_and_gives_up_when_searched(tmp_path):
    from trainables.training.dataset_params import dataset_digest

    root = tmp_path / "data"
    root.mkdir()
    (root / "a.bin").write_bytes(b"1234")
    fixed = {"dataset": "imagefolder", "dataset_kwargs": {"data_root": str(root)}}
    before = dataset_digest(fixed, set())
    assert before == dataset_digest(fixed, {"lr"})
    (root / "b.bin").write_bytes(b"5")
    assert dataset_digest(fixed, set()) != before
    assert dataset_digest(fixed, {"dataset"}) is None
