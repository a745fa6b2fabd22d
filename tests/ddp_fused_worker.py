"""One rank of the two-process gloo run in test_fused.py: two students trained fused, and each
alone, under DDP; rank 0 saves every report. A module of its own because each spawned rank
imports it afresh."""
import os

import torch
import torch.distributed as dist

from ddp_loss_worker import GlooSession
from trainables.data import load_dataset
from trainables.losses import create_loss
from trainables.models import create_model
from trainables.runtime.engine import seed_everything
from trainables.training.classifier_loop import CachedTeacher, OptimConfig, train_classifier
from trainables.training.fused import Member, train_fused

MEMBERS = [(0.05, 4.0), (0.2, 2.0)]  # (lr, temperature)


def build(data, lr, temperature, seed=0):
    seed_everything(seed)
    model = create_model("cnn_small", num_classes=data.num_classes, input_shape=data.input_shape)
    model.adapt_input(data.mean, data.std)
    loss = create_loss("kd", {"temperature": temperature}, num_classes=data.num_classes)
    return model, loss, OptimConfig(epochs=2, batch_size=32, lr=lr)


def run_rank(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    data = load_dataset("digits", seed=0)
    teacher = CachedTeacher(torch.randn(len(data.train_y), data.num_classes, generator=torch.Generator().manual_seed(1)))
    alone = []
    for lr, temperature in MEMBERS:
        model, loss, optim = build(data, lr, temperature)
        session = GlooSession(rank, world)
        train_classifier(model=model, data=data, loss_fn=loss, session=session, seed=0, teacher=teacher, optim=optim)
        alone.append(session.history)
    members = [Member(*build(data, lr, temperature)) for lr, temperature in MEMBERS]
    fused = GlooSession(rank, world)
    train_fused(members=members, data=data, session=fused, seed=0, teacher=teacher, mode="vmap")
    if rank == 0:
        torch.save({"alone": alone, "fused": fused.history}, os.path.join(out_dir, "histories.pt"))
    # Both ranks leave together: a rank still tearing its gloo group down after rank 0 (which hosts
    # the store) has gone aborted once ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()
