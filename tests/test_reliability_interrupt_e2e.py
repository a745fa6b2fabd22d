"""Interrupting a sweep in each phase (issue 20): before Ray, during the trials (SIGTERM here; the
Ctrl-C case is in test_reliability_e2e.py), during the reference runs, during the report. Each
exits 130 with the sweep ``interrupted``; the same command then finishes it, with one MLflow child
per trial and a verdict for the final best config."""
import csv
import json
import os
import re
import signal

import pytest

from tests.test_reliability_e2e import Sweep, mlflow_runs, wait_for

SPACE = """
name: faults-phases
trainable: faulty
params:
  epochs: 3
  loss_params: {sleep_s: 0.4}
search:
  seed: {grid: [0, 1, 2]}
resources: {workers: 1, cpus_per_worker: 1, max_concurrent_trials: 1}
checkpoint: {every: 1, keep: 2}
control: {enabled: true, seeds: 2, workers: 1}
"""


def interrupted(tmp_path, name, out, rc, sweep):
    assert rc == 130, out[-3000:]
    # an interrupted driver stopped its local Ray and kept the temp dir, for Ray's logs
    assert sweep.ray_tmp() and os.path.isdir(os.path.join(sweep.ray_tmp(), "ray")), out[-3000:]
    assert sweep.ray_left_running == []
    assert f"interrupted; the sweep's state is saved: resume it with --resume {name}" in out, out[-3000:]
    assert "results:" not in out, "an interrupted sweep writes no final report"
    status = json.loads((tmp_path / "ray_results" / name / "w2s_status.json").read_text())
    assert status["status"] == "interrupted"


def finished_once(tmp_path, name):
    """The same command finishes it: every trial once in the results and in MLflow, the parent's
    verdict from reference runs of the best config written to best_config.json."""
    resumed = Sweep(tmp_path, "space.yaml", "--name", name)
    rc, out = resumed.wait(check_ray=True)
    assert rc == 0, out[-3000:]
    assert "resuming it" in out and "best trial" in out and "reference: " in out
    # the interrupted driver's temp dir went with the resume; this clean exit removed its own
    assert re.search(r"the sweep's previous driver \(pid \d+\) is gone: removed its Ray temp dir", out), out[-3000:]
    assert resumed.ray_tmp() and not os.path.exists(resumed.ray_tmp())
    assert resumed.ray_left_running == []
    out_dir = tmp_path / "ray_results" / name
    with open(out_dir / "results.csv") as f:
        assert sorted(r["param.seed"] for r in csv.DictReader(f)) == ["0", "1", "2"]
    client, runs = mlflow_runs(tmp_path, "faults-phases", name)
    trials = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert sorted(r.data.params["seed"] for r in trials) == ["0", "1", "2"]
    assert all(r.info.status == "FINISHED" for r in trials)
    best = json.loads((out_dir / "best_config.json").read_text())
    references = [r for r in runs if r.data.tags["w2s.role"] in ("reproduce", "control")]
    assert len(references) == 4  # best config and control, 2 seeds each
    # every reference run is of the final best config (seeds from its seed on), or its control (lr halved)
    seed = int(best["config"]["seed"])
    assert sorted((r.data.tags["w2s.role"], int(r.data.params["seed"])) for r in references) == [
        ("control", seed), ("control", seed + 1), ("reproduce", seed), ("reproduce", seed + 1)]
    for run in references:
        assert float(run.data.params.get("lr", 0.05)) == (0.025 if run.data.tags["w2s.role"] == "control" else 0.05)
    (parent,) = [r for r in runs if r.data.tags["w2s.role"] == "parent"]
    assert parent.info.status == "FINISHED" and parent.data.tags["w2s.reference_verdict"]
    assert json.loads((out_dir / "w2s_status.json").read_text())["status"] == "finished"
    return out


@pytest.mark.slow
def test_sigterm_during_the_trials(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    first = Sweep(tmp_path, "space.yaml", "--name", "term")
    wait_for(lambda: re.search(r"\[\s*1/3\] \S+ completed", first.output()), 600, first, "the first trial to end")
    os.kill(first.proc.pid, signal.SIGTERM)
    rc, out = first.wait(check_ray=True)
    interrupted(tmp_path, "term", out, rc, first)
    assert "reference runs:" not in out
    finished_once(tmp_path, "term")


@pytest.mark.slow
def test_ctrl_c_during_the_reference_runs(tmp_path):
    (tmp_path / "space.yaml").write_text(SPACE)
    first = Sweep(tmp_path, "space.yaml", "--name", "ref")
    wait_for(lambda: re.search(r"\[\s*1/4\] \S+ completed", first.output()), 600, first, "the first reference run")
    os.kill(first.proc.pid, signal.SIGINT)
    rc, out = first.wait(check_ray=True)
    interrupted(tmp_path, "ref", out, rc, first)
    assert "reference: " not in out
    finished_once(tmp_path, "ref")


@pytest.mark.slow
def test_ctrl_c_during_the_report(tmp_path, monkeypatch):
    from tests.plugins.faults import REPORT_SLEEP_ENV

    (tmp_path / "space.yaml").write_text(SPACE)
    monkeypatch.setenv(REPORT_SLEEP_ENV, "30")
    first = Sweep(tmp_path, "space.yaml", "--name", "rep")
    wait_for(lambda: "full config: " in first.output(), 600, first, "the report")
    os.kill(first.proc.pid, signal.SIGINT)
    rc, out = first.wait(check_ray=True)
    interrupted(tmp_path, "rep", out, rc, first)
    monkeypatch.setenv(REPORT_SLEEP_ENV, "0")
    out = finished_once(tmp_path, "rep")
    assert "faulty summary: 3 trials" in out


def test_an_interrupt_before_ray_starts_exits_130_with_nothing_to_resume(monkeypatch, tmp_path, capsys):
    from orchestrator import cli
    from orchestrator.run import sweep

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep, "check_before_start", interrupt)
    rc = cli.main([os.path.join(os.path.dirname(__file__), "..", "search_spaces", "quickstart.yaml"),
                   "--storage-path", str(tmp_path / "runs"), "--mlflow-uri", f"sqlite:///{tmp_path}/m.db"])
    assert rc == 130
    assert capsys.readouterr().err.strip() == ("interrupted before the sweep started; nothing ran: run the same "
                                               "command again")
    assert not (tmp_path / "runs").exists()


def test_sigterm_is_raised_again_as_sigint_while_the_cli_runs_and_put_back_after():
    from orchestrator.run.resume import term_as_interrupt

    before = signal.getsignal(signal.SIGTERM)
    undo = term_as_interrupt()
    try:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0.5) if hasattr(signal, "sigtimedwait") else None
    finally:
        undo()
    assert signal.getsignal(signal.SIGTERM) is before
