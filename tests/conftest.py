import atexit
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO not in sys.path:
    sys.path.insert(0, REPO)

_sessions: list = []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session):
    _sessions.append(session)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """Once pytest has reported everything, leave without the interpreter's teardown.

    Why: this process holds torch (dynamo caches, a gloo group made and destroyed), an in-process
    Ray that was shut down, pyarrow and MLflow's sqlite engine. CI saw it segfault once *after*
    printing "1487 passed" (make: Segmentation fault, exit 2) while the same commit passed twice
    here: a native finaliser racing the interpreter's teardown, in no code path a user runs
    (every sweep the tests start is a subprocess whose exit code they check). The handler is
    registered last, so it runs first among the ``atexit`` handlers, after pytest's own clean-up
    (summary, junit file, temp directories); the exit status is pytest's, so a failed or
    interrupted session still fails. ``W2S_TEST_FULL_TEARDOWN=1`` keeps the normal exit, to hunt
    the crash (``make test`` runs pytest under ``-X faulthandler``, which prints its stack)."""
    if _sessions and os.environ.get("W2S_TEST_FULL_TEARDOWN") != "1":
        atexit.register(_leave, _sessions[-1])


def _leave(session) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(session.exitstatus))


@pytest.fixture
def run_cli(tmp_path):
    """Run ``run_sweep.py`` as a user would, in a scratch working directory."""

    def _run(*args, timeout=900, cwd=None, env=None):
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.run([sys.executable, os.path.join(REPO, "run_sweep.py"), *args],
                              cwd=cwd or tmp_path, env=env, capture_output=True, text=True, timeout=timeout)
        return proc

    return _run


@pytest.fixture
def one_torch_thread():
    """One intra-op thread: on a small shared CPU, two threads spin against other processes and
    run model tests several times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    """A trial context with its own artifact cache, shared by one module's trials (a teacher
    trained for the first trial is reused by the next)."""
    from orchestrator.store.cache import ArtifactCache
    from trainables.runtime.trainable import TrialContext

    return TrialContext(artifacts=ArtifactCache(str(tmp_path_factory.mktemp("cache"))), checkpoint_every=0)


@pytest.fixture(scope="session")
def space_sweep(tmp_path_factory):
    """``run_sweep.py SPACE --name s [EXTRA...]`` as a user runs it, in a scratch working directory,
    once per session for each (space, extra): tests that check the same sweep share one run (the
    small seed variants each take a minute on 2 CPUs). Returns (working directory, the completed
    process, seconds it took)."""
    done = {}

    def _run(space, *extra, timeout=600):
        key = (space, extra)
        if key not in done:
            cwd = tmp_path_factory.mktemp("sweep")
            t0 = time.time()
            proc = subprocess.run([sys.executable, os.path.join(REPO, "run_sweep.py"), space, "--name", "s", *extra],
                                  cwd=cwd, capture_output=True, text=True, timeout=timeout)
            done[key] = (cwd, proc, time.time() - t0)
        return done[key]

    return _run


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray for the tests of one module (2 CPUs, the repository importable in workers)."""
    import ray

    if ray.is_initialized():
        yield ray
        return
    # With the dashboard: Ray Train V2's placement-group cleaner asks the State API whether the
    # controller lives, and without it took the controller for dead and killed a worker mid-pass.
    ray.init(num_cpus=2, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": REPO, "OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


def mlflow_runs(tmp_path, experiment: str, sweep: str):
    """(client, runs) of sweep ``sweep`` in experiment ``experiment`` of the sqlite MLflow store a
    sweep run in ``tmp_path`` wrote (run_sweep.py's default store)."""
    import mlflow

    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id], filter_string=f"tags.`w2s.sweep` = '{sweep}'")
