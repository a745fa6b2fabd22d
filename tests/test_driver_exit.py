"""How ``run_sweep.py`` ends (orchestrator/cli.py ``leave``): the local Ray it started is shut down
and, on a clean exit only, its private temp dir removed; the exit status is main's. The sweeps that
exercise it for real are in test_reliability_interrupt_e2e.py and test_sweep_lock_e2e.py."""
import gc
import os
import shutil
import tempfile

import pytest

from orchestrator import cli
from orchestrator.run import local_ray


@pytest.fixture
def own_dir(monkeypatch):
    path = tempfile.mkdtemp(prefix=local_ray.TEMP_PREFIX, dir="/tmp")
    os.makedirs(os.path.join(path, "ray", "session_latest", "logs"))
    monkeypatch.setattr(local_ray, "_own_dir", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def no_freeze(monkeypatch):
    """``leave`` freezes the garbage collector for the process's last moments; not this one's."""
    calls = []
    monkeypatch.setattr(gc, "freeze", lambda: calls.append("freeze"))
    return calls


@pytest.mark.parametrize("status, kept", [(0, False), (1, True), (2, True), (3, True), (4, True), (130, True)])
def test_a_clean_exit_removes_the_local_rays_temp_dir_any_other_keeps_it(own_dir, no_freeze, status, kept):
    import ray

    assert not ray.is_initialized()  # the shutdown is Ray's own no-op here; the e2e sweeps run a real one
    with pytest.raises(SystemExit) as exit_:
        cli.leave(status)
    assert exit_.value.code == status
    assert os.path.isdir(own_dir) == kept
    assert no_freeze == ["freeze"]


def test_a_ray_this_process_did_not_start_is_not_touched(monkeypatch, no_freeze):
    """A cluster, or a RAY_TMPDIR the user set: prepare_local_ray made no dir, so nothing is shut
    down or removed here (Ray's own atexit handler disconnects from a cluster)."""
    import ray

    monkeypatch.setattr(local_ray, "_own_dir", None)
    shutdowns = []
    monkeypatch.setattr(ray, "shutdown", lambda *a, **k: shutdowns.append(1))
    with pytest.raises(SystemExit) as exit_:
        cli.leave(0)
    assert exit_.value.code == 0 and shutdowns == []


def test_a_failing_shutdown_warns_and_keeps_the_status(own_dir, monkeypatch, no_freeze, capsys):
    import ray

    def broken(*args, **kwargs):
        raise RuntimeError("gcs unreachable")

    monkeypatch.setattr(ray, "shutdown", broken)
    with pytest.raises(SystemExit) as exit_:
        cli.leave(0)
    assert exit_.value.code == 0
    assert capsys.readouterr().err == "warning: stopping the local Ray: RuntimeError: gcs unreachable\n"
    assert os.path.isdir(own_dir)  # not removed under a Ray that may still be running


def test_ctrl_c_while_ray_stops_exits_130_and_keeps_the_dir(own_dir, monkeypatch, no_freeze):
    import ray

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ray, "shutdown", interrupted)
    with pytest.raises(SystemExit) as exit_:
        cli.leave(0)
    assert exit_.value.code == 130 and os.path.isdir(own_dir)
