"""A truncated latest checkpoint does not lose its trial: the resume sets the corrupt state aside
and the trial goes on from its previous checkpoint, says so in the output and on its MLflow run,
and finishes (issue 20, item 2)."""
import os
import time

import pytest
import torch

from tests.test_reliability_e2e import Sweep, mlflow_runs, read_trace, wait_for

pytestmark = pytest.mark.slow

SPACE = """
name: faults-ckpt
trainable: faulty
params:
  epochs: 6
  loss_params: {{sleep_s: 0.8, trace: {trace}}}
search:
  seed: {{grid: [0]}}
resources: {{workers: 1, cpus_per_worker: 1}}
checkpoint: {{every: 1, keep: 3}}
control: {{enabled: false}}
"""


def test_a_truncated_latest_checkpoint_resumes_from_the_previous_one(tmp_path):
    trace = tmp_path / "trace.txt"
    (tmp_path / "space.yaml").write_text(SPACE.format(trace=trace))
    first = Sweep(tmp_path, "space.yaml", "--name", "ck")
    out_dir = tmp_path / "ray_results" / "ck"

    def checkpoints():
        return sorted(p.parent for p in out_dir.glob("*/checkpoint_*/state.pt"))

    wait_for(lambda: len(checkpoints()) >= 3, 600, first, "three checkpoints")
    first.kill_driver()
    # the trial's worker may outlive the driver by a moment and persist one more checkpoint
    kept, deadline = checkpoints(), time.time() + 30
    while time.time() < deadline:
        time.sleep(3)
        if checkpoints() == kept:
            break
        kept = checkpoints()
    latest, previous = kept[-1], kept[-2]
    resumed_from = torch.load(previous / "state.pt", weights_only=False)["progress"]["epoch"]
    data = (latest / "state.pt").read_bytes()
    (latest / "state.pt").write_bytes(data[: len(data) // 2])  # a write cut short
    # The driver syncs result.json into the sweep folder now and then: a driver killed in between
    # leaves none (as in two CI runs), and the repair must still find the trial's MLflow run.
    (latest.parent / "result.json").unlink(missing_ok=True)
    lines_before = len(read_trace(trace))

    rc, out = Sweep(tmp_path, "--resume", "ck").wait()
    assert rc == 0, out[-4000:]
    assert (f"state.pt is not a readable torch checkpoint" in out and "kept as state.pt.corrupt; its trial goes on "
            f"from {previous.name}" in out), out[-4000:]
    # (the folder itself is gone by now: Tune's checkpoint.keep retired it once newer ones came)
    after = [e for _, _, e, _ in read_trace(trace)[lines_before:]]
    # from a readable checkpoint: the previous one, or an older one when Tune's experiment state
    # (saved every few seconds, and the driver was SIGKILLed) had not yet recorded the newer ones;
    # never from scratch, never from the corrupt one
    assert after and 1 < after[0] <= resumed_from + 1 and after[-1] == 6, (resumed_from, after)

    client, runs = mlflow_runs(tmp_path, "faults-ckpt", "ck")
    trial = [r for r in runs if r.data.tags["w2s.role"] == "trial"]
    assert len(trial) == 1 and trial[0].info.status == "FINISHED"
    assert trial[0].data.tags["w2s.outcome"] == "completed"
    # set by the resume check (and by the trial itself when Tune hands it the corrupt checkpoint,
    # or none: Tune's saved state had not recorded it yet); a later note adds to the first
    note = trial[0].data.tags["w2s.checkpoint_note"]
    assert f"resumed from {latest.name}" not in note, note
    assert note.startswith(f"checkpoint {latest.parent.name}/{latest.name}/state.pt is not a readable torch checkpoint") \
        or note.startswith(f"checkpoint {latest.name} has no readable state; resumed from {previous.name}"), note
    assert max(m.step for m in client.get_metric_history(trial[0].info.run_id, "trial_time_s")) == 6
    assert os.path.exists(out_dir / "best_config.json")
