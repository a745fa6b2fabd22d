"""One rank of the two-process gloo DINO run in test_dino.py (a module of its own: every spawned
rank imports it afresh)."""
import os

import torch
import torch.distributed as dist

from ddp_loss_worker import GlooSession
from trainables.data import load_dataset
from trainables.dino.loop import DinoRun
from trainables.dino.params import DinoParams


def run_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    """Two EMA updates with the teacher's BN statistics from the student; save the teacher's buffers."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    p = DinoParams.model_validate({
        "encoder": "cnn", "head": {"hidden_dims": [32], "bottleneck_dim": 16, "out_dim": 64},
        "crops": {"global_crops": 1, "global_scale": [1.0, 1.0], "hflip": False},
        "loss_params": {"teacher_temp": 0.1, "student_temp": 0.1, "pairing": "same"},
        "teacher_mode": "ema", "teacher_momentum": 0.5, "teacher_eval": True, "teacher_bn_mode": "from_student",
        "epochs": 1, "warmup_epochs": 0, "batch_size": 32, "lr": 5e-3, "probe_epochs": 1,
        "freeze_last_layer_epochs": 0})
    run = DinoRun(p, load_dataset("digits", seed=0), GlooSession(rank, world))
    run.student.train()
    for i, idx in enumerate(run.micro_batches(0)):
        if i == 2:
            break
        run.step(0, idx)
    stats = {k: v.clone() for k, v in run.teacher.state_dict().items() if "running" in k}
    torch.save(stats, os.path.join(out_dir, f"rank{rank}.pt"))
    # Both ranks leave together: a rank still tearing its gloo group down after rank 0 (which hosts
    # the store) has gone aborted once ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()
