"""Every bad input in tests/fixtures/bad_inputs/ (one file each; its header comments say how to
run it and what the error says): exit code 2, one line on stderr naming the key and the value,
nothing on stdout (the sweep prints its first line once Ray starts), and nothing written: the
scratch working directory, which holds the default --storage-path and sqlite MLflow store, stays
empty, and the fixtures folder is unchanged.

Most cases call ``orchestrator.cli.main`` in-process (milliseconds each); those marked
``# run: subprocess`` run the real command, to show the exit code and the one line a user sees.
"""
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

import tests.plugins.faults  # noqa: F401 - registers the `faulty` trainable and `absent_files` dataset
from orchestrator import cli
from orchestrator.run.environment import VARIABLES, check_environment
from tests.conftest import REPO

FIXTURES = Path(__file__).parent / "fixtures" / "bad_inputs"
CASES = sorted(FIXTURES.glob("[0-9][0-9]*_*.yaml"))
KEYS = ("args", "env", "file", "run", "expect")


def header(path: Path) -> dict[str, str]:
    fields = {}
    for raw in path.read_bytes().split(b"\n"):
        line = raw.decode("ascii", errors="replace")
        key, sep, value = line.removeprefix("# ").partition(": ")
        if not line.startswith("# ") or not sep or key not in KEYS:
            break
        fields[key] = value.strip()
    return fields


def command(path: Path, tmp: Path) -> tuple[list[str], dict[str, str], dict[str, str]]:
    fields = header(path)

    def subst(text: str) -> str:
        return text.replace("{fixtures}", str(FIXTURES)).replace("{tmp}", str(tmp))

    args = shlex.split(subst(fields.get("args", "")))
    argv = ([] if fields.get("file") == "none" else [str(path)]) + args
    if "--storage-path" not in args:
        argv += ["--storage-path", str(tmp / "runs")]
    if "--mlflow-uri" not in args:
        argv += ["--mlflow-uri", f"sqlite:///{tmp}/mlflow.db"]
    env = dict(item.split("=", 1) for item in shlex.split(subst(fields.get("env", ""))))
    return argv, env, fields


def snapshot(folder: Path) -> list[tuple[str, int, int]]:
    """Every file with its size and modification time, and every folder (a folder's own mtime is
    left out: the sweep lock of a refused --resume creates and deletes its lock file there)."""
    return sorted((str(p), p.stat().st_size, 0 if p.is_dir() else p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_there_are_at_least_50_cases():
    assert len(CASES) >= 50
    for path in CASES:
        assert "expect" in header(path), f"{path.name}: no '# expect:' header"


@pytest.mark.parametrize("path", CASES, ids=lambda p: p.stem)
def test_bad_input_is_one_line_exit_2_before_ray_and_writes_nothing(path, tmp_path, monkeypatch, capsys):
    argv, env, fields = command(path, tmp_path)
    before = snapshot(FIXTURES)
    t0 = time.time()
    if fields.get("run") == "subprocess":
        full_env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        full_env.update(env, PYTHONUNBUFFERED="1", PYTHONPATH=REPO)
        proc = subprocess.run([sys.executable, os.path.join(REPO, "run_sweep.py"), *argv], cwd=tmp_path,
                              env=full_env, capture_output=True, text=True, timeout=120)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        import ray

        monkeypatch.chdir(tmp_path)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        ray_tmpdir = os.environ.get("RAY_TMPDIR")
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        rc = cli.main(argv)
        out, err = capsys.readouterr()
        assert not ray.is_initialized(), "a bad input must be caught before Ray starts"
        assert os.environ.get("RAY_TMPDIR") == ray_tmpdir, "no local Ray temp dir may be made"
    elapsed = time.time() - t0
    assert rc == 2, f"exit code {rc}\nstdout: {out}\nstderr: {err}"
    assert err.endswith("\n") and err.count("\n") == 1, f"one line expected on stderr, got:\n{err}"
    assert err.startswith("error: ") and "Traceback" not in err
    assert fields["expect"] in err, f"expected {fields['expect']!r} in:\n{err}"
    assert out == "", f"nothing may be printed before the error (the sweep's first line means Ray started):\n{out}"
    assert sorted(os.listdir(tmp_path)) == [], "a refused sweep must write nothing (no mlflow.db, no runs/)"
    assert snapshot(FIXTURES) == before
    assert elapsed < 30, f"took {elapsed:.1f}s"


def test_every_environment_variable_is_documented():
    readme = (Path(REPO) / "README.md").read_text()
    missing = [v.name for v in VARIABLES if f"`{v.name}`" not in readme]
    assert not missing, f"README.md's environment table lacks {missing}"


@pytest.mark.parametrize("env", [{}, {"W2S_PROGRESS_INTERVAL_S": "2.5", "W2S_OFFLINE": "1", "HF_HUB_OFFLINE": "0",
                                      "W2S_PLUGINS": "a.b, c", "OMP_NUM_THREADS": "4", "RAY_ADDRESS": "auto",
                                      "HF_ENDPOINT": "https://hf-mirror.com", "TUNE_DISABLE_SIGINT_HANDLER": "",
                                      "W2S_MLFLOW_URI": "http://127.0.0.1:5000", "W2S_STORAGE_PATH": "s3://b/p",
                                      "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5", "W2S_DATA_ROOT": "",
                                      "RAY_ADDRESS_": "x"}])
def test_accepted_environment_passes(env):
    check_environment(env)


def test_an_override_on_resume_that_changes_nothing_is_accepted():
    from orchestrator.run.options import SweepOptions
    from orchestrator.run.sweep import load_resume_spec

    opts = SweepOptions(storage_path=str(FIXTURES / "stored"), overrides=["params.epochs=2"], num_samples=2)
    spec, _ = load_resume_spec(opts, "stored")
    assert spec.num_samples == 2


def test_a_large_sweep_runs_with_yes(tmp_path, monkeypatch):
    from orchestrator.run import sweep

    called = []
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(sweep, "run_sweep", lambda spec, text, opts: called.append(spec.num_samples)
                        or type("R", (), {"best": object()})())
    assert cli.main([str(FIXTURES / "53_large_sweep_without_yes.yaml"), "--yes"]) == 0
    assert called == [10**9]


def test_the_address_probe_passes_a_listening_port():
    import socket

    from orchestrator.run.cluster import probe_address

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        probe_address(f"127.0.0.1:{server.getsockname()[1]}")
        probe_address(f"ray://127.0.0.1:{server.getsockname()[1]}")
    probe_address("auto")
