"""Make ``digits_cnn_backbone.pt``: the "pretrained backbone" of the small DAPT space
(``search_spaces/dapt_digits.yaml``), standing in for DAPT's ImageNet weights.

A ``cnn`` is trained on the digits *training split* with a different label space, five
super-classes (digit // 2), so that its head does not fit the 10-way task and stays freshly
initialised when a teacher is built from it (as an ImageNet head is dropped for a downstream task).
Deterministic; about 10 s on a CPU core:

    .venv/bin/python search_spaces/assets/make_digits_backbone.py
"""
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from trainables.data import load_dataset  # noqa: E402
from trainables.runtime.engine import seed_everything  # noqa: E402
from trainables.models import create_model  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_cnn_backbone.pt")


def main() -> None:
    seed_everything(0)
    data = load_dataset("digits", seed=0)
    x, y = data.train_x, data.train_y // 2
    model = create_model("cnn", num_classes=5, input_shape=data.input_shape)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(15):
        for idx in torch.randperm(len(y), generator=gen).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(data.val_x).argmax(1) == data.val_y // 2).float().mean().item()
    torch.save(model.state_dict(), OUT)
    print(f"wrote {OUT} (5-way super-class val accuracy {acc:.3f})")


if __name__ == "__main__":
    main()
