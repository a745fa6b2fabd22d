"""Bad inputs caught before any trial starts (before Ray starts, even): one clear message naming
what is wrong, where and what to do, and a non-zero exit code. Runs ``run_sweep.py``'s ``main``
in-process, so each case costs milliseconds; the last test runs the real command once to show the
user sees one line, not a traceback. The table in docs/reliability.md lists every case."""
import json
import os
import subprocess
import sys

import pytest
import torch

import tests.plugins.faults  # noqa: F401 - registers the `faulty` trainable and `absent_files` dataset
from orchestrator import cli
from orchestrator.errors import SpecError
from orchestrator.run.resources import ClusterResources, plan_resources
from orchestrator.space.spec import parse_spec
from tests.conftest import REPO

FAULTY = """
name: t
trainable: faulty
params: {epochs: 2}
search:
  seed: {grid: [0, 1]}
control: {enabled: false}
"""


@pytest.fixture
def sweep(tmp_path, monkeypatch, capsys):
    """``sweep(*args, space=TEXT)`` runs the command line in tmp_path: (exit code, stdout, stderr)."""
    monkeypatch.chdir(tmp_path)

    def run(*args, space=FAULTY):
        path = tmp_path / "space.yaml"
        if space is not None:
            path.write_text(space)
        argv = [str(path), *args] if space is not None else list(args)
        rc = cli.main(argv)
        out, err = capsys.readouterr()
        import ray

        assert not ray.is_initialized(), "a bad input must be caught before Ray starts"
        return rc, out, err

    return run


def one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_unreachable_mlflow_server(sweep):
    rc, _, err = sweep("--mlflow-uri", "http://127.0.0.1:9")
    assert rc == 2 and "the MLflow server at http://127.0.0.1:9 is unreachable" in one_error(err)
    assert "mlflow server --host 127.0.0.1 --port 9" in err


def test_unwritable_storage_path(sweep, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    rc, _, err = sweep("--storage-path", str(blocker / "results"))
    assert rc == 2 and f"--storage-path {blocker}/results is not writable" in one_error(err)


def test_missing_search_space_file(sweep, tmp_path):
    rc, _, err = sweep(str(tmp_path / "nope.yaml"), space=None)
    assert rc == 2 and one_error(err) == (f"error: {tmp_path}/nope.yaml: cannot read the search-space file: "
                                          "No such file or directory")


def test_missing_dataset_files(sweep, tmp_path):
    rc, _, err = sweep("--set", "params.dataset=absent_files")
    line = one_error(err)
    assert rc == 2 and line.startswith("error: ") and "params.dataset: dataset 'absent_files' is not available: " \
        "/nonexistent/absent_files/train.npz not found and this dataset cannot be downloaded; copy its files there" \
        in line


def test_missing_dataset_in_a_searched_choice(sweep):
    space = FAULTY.replace("seed: {grid: [0, 1]}", "dataset: {choice: [digits, absent_files]}")
    rc, _, err = sweep(space=space)
    assert rc == 2 and "search.dataset: dataset 'absent_files' is not available" in one_error(err)


def test_a_dry_run_lists_missing_data_and_checkpoints_and_exits_0(sweep, tmp_path):
    """A dry run checks the plan, not the machine: what a real run would refuse is listed, not fatal."""
    space = FAULTY.replace("seed: {grid: [0, 1]}", "dataset: {choice: [digits, absent_files]}")
    rc, out, err = sweep("--dry-run", "--set", f"params.init_from={tmp_path}/student.pt", space=space)
    assert rc == 0 and "Traceback" not in err
    missing = out.split("# missing inputs (2): a real run refuses to start until each is in place\n")[1]
    listed = missing.split("\n\n")[0].splitlines()
    assert len(listed) == 2 and all(line.startswith("  ") for line in listed)
    assert any("search.dataset: dataset 'absent_files' is not available" in line for line in listed)
    assert any(f"params.init_from: the checkpoint to start from, {tmp_path}/student.pt, does not exist" in line
               for line in listed)
    # the real run still refuses, before Ray, with one line per problem
    rc, _, err = sweep("--set", f"params.init_from={tmp_path}/student.pt", space=space)
    lines = err.strip().splitlines()
    assert rc == 2 and "Traceback" not in err and len(lines) == 2 and lines[0].startswith("error: ")
    assert "is not available" in err and "does not exist" in err


def test_missing_checkpoint_to_start_from(sweep, tmp_path):
    rc, _, err = sweep("--set", f"params.init_from={tmp_path}/student.pt")
    assert rc == 2 and f"params.init_from: the checkpoint to start from, {tmp_path}/student.pt, does not exist; " \
        "point init_from at a file written by torch.save" in one_error(err)


def test_corrupt_checkpoint_to_start_from(sweep, tmp_path):
    path = tmp_path / "student.pt"
    torch.save({"w": torch.zeros(100)}, path)
    path.write_bytes(path.read_bytes()[:200])  # truncated, as by a full disk or an interrupted copy
    rc, _, err = sweep("--set", f"params.init_from={path}")
    assert rc == 2 and f"the checkpoint to start from, {path}, is not a readable torch checkpoint" in one_error(err)


def test_resume_of_an_unknown_sweep(sweep, tmp_path):
    rc, _, err = sweep("--resume", "never-ran", space=None)
    assert rc == 2 and one_error(err) == (f"error: --resume never-ran: no sweep of that name under {tmp_path}/ray_results "
                                          f"(looked for {tmp_path}/ray_results/never-ran/w2s_search_space.yaml)")


def test_resume_with_a_space_file(sweep):
    rc, _, err = sweep("--resume", "x")
    assert rc == 2 and "--resume NAME reads the search space saved with the sweep; do not also pass a file" in err


def saved_sweep(tmp_path, name, status=None, pid=None):
    out = tmp_path / "ray_results" / name
    out.mkdir(parents=True)
    (out / "w2s_search_space.yaml").write_text(FAULTY)
    (out / "w2s_overrides.json").write_text(json.dumps({"overrides": [], "num_samples": None}))
    if status:
        import socket

        (out / "w2s_status.json").write_text(json.dumps({"status": status, "host": socket.gethostname(),
                                                          "pid": pid or 1}))
    return out


def test_same_name_with_a_different_search_space(sweep, tmp_path):
    saved_sweep(tmp_path, "exp")
    rc, _, err = sweep("--name", "exp", "--set", "params.epochs=3")
    assert rc == 2 and one_error(err) == (
        f"error: --name exp: a sweep of that name already exists under {tmp_path}/ray_results with a different "
        "search space (first difference: params.epochs: 2 -> 3). Resume it as it was with --resume exp, or choose "
        "another --name")


def test_same_name_when_that_sweep_finished_does_nothing(sweep, tmp_path):
    saved_sweep(tmp_path, "exp", status="finished")
    rc, out, err = sweep("--name", "exp")
    assert rc == 0 and err == ""
    assert out.startswith(f"sweep exp already finished: its results are in {tmp_path}/ray_results/exp. Nothing to do")


def test_a_second_driver_on_a_running_sweep(sweep, tmp_path):
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "run_sweep.py"])
    try:
        saved_sweep(tmp_path, "exp", status="running", pid=other.pid)
        rc, _, err = sweep("--name", "exp")
        assert rc == 2 and f"sweep exp is already running (driver pid {other.pid} on this host)" in one_error(err)
        rc, _, err = sweep("--resume", "exp", space=None)
        assert rc == 2 and "is already running" in one_error(err)
    finally:
        other.kill()
        other.wait()


def test_combinations_of_valid_values_that_make_invalid_trials(sweep):
    space = FAULTY.replace("params: {epochs: 2}", "params: {}").replace(
        "seed: {grid: [0, 1]}", "epochs: {grid: [4, 2]}\n  warmup_epochs: {grid: [0, 3]}")
    rc, _, err = sweep(space=space)
    assert rc == 2 and one_error(err).endswith(
        "space.yaml: search: 1 of 4 combinations of searched values are invalid trials, e.g. epochs=2, "
        "warmup_epochs=3: warmup_epochs (3) must be below epochs (2); narrow the ranges so that they fit together")


@pytest.mark.parametrize("override,expected", [
    ("time_budget_s=2", "time_budget_s: is too short for any trial to report (starting trials alone takes seconds); "
                        "use at least 10 (got 2.0)"),
    ("stop.target=0", "stop.target: is met by every trial's first report (val_acc lies in [0, 1]), so every trial "
                      "would stop after one epoch: zero trials would train (got 0.0)"),
    ("stop.target=95", "stop.target: can never be reached: val_acc lies in [0, 1] (did you mean 0.95?) (got 95.0)"),
    ("points_to_evaluate=[{seed: 0}, {seed: 1}, {seed: 2}]",
     "num_samples: is below the 3 points_to_evaluate: each point takes one sample, so set num_samples to at least 3 "
     "(got 1)"),
])
def test_spaces_that_leave_no_trial_to_train(sweep, override, expected):
    rc, _, err = sweep("--set", override)
    assert rc == 2 and one_error(err).endswith(f"space.yaml: {expected}")


def test_watchdog_settings_are_validated(sweep):
    rc, _, err = sweep("--set", "watchdog={timeout_s: 60, abort_after_s: 30}")
    assert rc == 2 and "watchdog: abort_after_s (30) must be at least timeout_s (60)" in one_error(err)


def test_num_samples_flag_below_one(sweep):
    rc, _, err = sweep("--num-samples", "0")
    assert rc == 2 and one_error(err) == "error: --num-samples must be at least 1 (got 0)"


def test_gpus_on_a_cluster_that_cannot_have_any():
    spec = parse_spec(FAULTY + "resources: {gpus_per_worker: 1}\n", "space.yaml")
    no_gpu_ever = ClusterResources(cpus=64, gpus=0, source="cluster at 10.0.0.1:6379", max_gpus=0)
    with pytest.raises(SpecError) as info:
        plan_resources(spec, no_gpu_ever, strict=False)
    assert str(info.value) == ("space.yaml: resources.gpus_per_worker: GPUs requested but the cluster at "
                               "10.0.0.1:6379 has none (nor can its autoscaler add any); set it to 0 to train on CPU "
                               "(got 1.0)")
    # An autoscaling cluster that may still add GPU nodes gets a warning in the plan instead.
    maybe = ClusterResources(cpus=64, gpus=0, source="cluster at 10.0.0.1:6379", max_gpus=None)
    assert any(line.startswith("warning: resources.gpus_per_worker: GPUs requested")
               for line in plan_resources(spec, maybe, strict=False).lines())


def test_unexpected_errors_are_one_line_with_the_traceback_in_a_file(sweep, monkeypatch):
    import orchestrator.run.sweep

    def boom(*a, **k):
        raise RuntimeError("simulated internal failure\nwith a second line")

    monkeypatch.setattr(orchestrator.run.sweep, "check_storage", boom)
    rc, _, err = sweep()
    line = one_error(err)
    assert rc == 4 and line.startswith("error: unexpected RuntimeError: simulated internal failure (full traceback "
                                       "in ")
    log = line.split("full traceback in ")[1].split(")")[0]
    assert "simulated internal failure" in open(log).read()
    os.remove(log)


def test_the_real_command_prints_one_line_for_a_broken_plugin(tmp_path):
    env = {**os.environ, "W2S_PLUGINS": "mylab.not_installed"}
    proc = subprocess.run([sys.executable, os.path.join(REPO, "run_sweep.py"), "--dry-run"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert one_error(proc.stderr) == ("error: W2S_PLUGINS: cannot import plugin module 'mylab.not_installed' (No module "
                                      "named 'mylab'); it must be importable from the working directory or "
                                      "PYTHONPATH on every node")


def test_a_key_written_twice_is_named_with_both_lines(sweep, tmp_path):
    rc, _, err = sweep(space=FAULTY + "mode: max\nmode: min\n")
    assert rc == 2 and "key 'mode' is written twice (lines 8 and 9)" in one_error(err)
    rc, _, err = sweep(space=FAULTY.replace("params: {epochs: 2}", "params: {epochs: 2, epochs: 3}"))
    assert rc == 2 and "key 'epochs' is written twice (lines 4 and 4)" in one_error(err)
    assert os.listdir(tmp_path) == ["space.yaml"]


def test_a_binary_search_space_file(sweep, tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(b"\x80\x02}q\x00(X\x05\x00\x00\x00model")  # a pickle, not YAML
    rc, _, err = sweep(str(path), space=None)
    assert rc == 2 and "not a text (UTF-8) YAML file" in one_error(err)


@pytest.mark.parametrize("flag,name", [("--name", "../escape"), ("--name", "a/b"), ("--name", "x" * 300),
                                       ("--resume", "a/b"), ("--name", ".hidden")])
def test_a_sweep_name_that_is_no_folder_name(sweep, tmp_path, flag, name):
    rc, _, err = sweep(flag, name, space=None if flag == "--resume" else FAULTY)
    assert rc == 2 and f"{flag}: a sweep name is 1 to 81 letters" in one_error(err)
    assert not (tmp_path / "ray_results").exists() and not (tmp_path.parent / "escape").exists()


def test_integer_ranges_fit_int64(sweep):
    rc, _, err = sweep("--set", "search.seed={randint: [0, 1e30]}")
    assert rc == 2 and "search.seed.randint: bounds must fit a 64-bit integer" in one_error(err)
