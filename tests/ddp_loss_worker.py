"""One rank of the two-process gloo run in test_losses_distill_loop.py. A module of its own, with
few imports, because every spawned rank imports it afresh."""
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from trainables.data.synthetic import load_synthetic
from trainables.losses import create_loss
from trainables.models import create_model
from trainables.runtime.session import LocalSession
from trainables.training.classifier_loop import CachedTeacher, OptimConfig, train_classifier


class GlooSession(LocalSession):
    def __init__(self, rank: int, world: int):
        super().__init__(torch.device("cpu"))
        self.rank, self.world_size = rank, world

    def prepare_model(self, model):
        return DistributedDataParallel(model)


def run_rank(rank: int, world: int, port: int, out_dir: str, compile_mode: bool | str = False) -> None:
    """Train a student with CRD for one epoch on this rank's shard (``compile_mode``: the student
    and the loss compiled, the loss's collectives inside); save the loss's state."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    data = load_synthetic(seed=0, train_size=256, val_size=32, test_size=32)
    torch.manual_seed(0)
    student = create_model("mlp_tiny", num_classes=data.num_classes, input_shape=data.input_shape)
    teacher = CachedTeacher(torch.randn(256, data.num_classes), torch.randn(256, 12))
    torch.manual_seed(100 + rank)  # ranks build different projectors and banks: rank 0's must win
    loss = create_loss("crd", {"projector": "mocov2", "embed_dim": 8, "nce_k": 16}, student_dim=32, teacher_dim=12,
                       num_samples=256, train_labels=data.train_y)
    train_classifier(model=student, data=data, loss_fn=loss, session=GlooSession(rank, world), seed=0,
                     teacher=teacher, optim=OptimConfig(epochs=1, batch_size=32, lr=0.1, compile=compile_mode))
    torch.save({k: v.clone() for k, v in loss.state_dict().items()}, os.path.join(out_dir, f"rank{rank}.pt"))
    # Both ranks leave together: a rank still tearing its gloo group down after rank 0 (which hosts
    # the store) has gone aborted once ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()
