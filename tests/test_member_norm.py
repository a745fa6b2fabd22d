"""The fused members' batch norm folded over K x C channels (trainables/training/member_norm.py):
inside the members' vmap it equals torch's own batching rule (outputs, gradients, running
statistics), runs batch norm's own kernels without a separate affine, and outside it is torch's."""
import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

from trainables.runtime.op_count import OpCount
from trainables.training.member_norm import (MemberBatchNorm1d, MemberBatchNorm2d, fold_member_batch_norm,
                                             members_vmapped)

K = 3


def stacked_run(members, x, folded: bool, train: bool = True):
    """The members' forward under vmap over stacked parameters and buffers (as the fused trial
    runs it); returns output, parameter gradients, input gradient and the stacked buffers after."""
    base = members[0]
    for m in members:
        m.train(train)
    params = {n: torch.stack([m.get_parameter(n) for m in members]).detach().requires_grad_()
              for n, _ in base.named_parameters()}
    buffers = {n: torch.stack([m.get_buffer(n) for m in members]) for n, _ in base.named_buffers()}
    x = x.detach().requires_grad_()
    call = vmap(lambda p, b, inp: functional_call(base, (p, b), (inp,)), in_dims=(0, 0, None))
    if folded:
        with members_vmapped():
            out = call(params, buffers, x)
    else:
        out = call(params, buffers, x)
    (out.sin() * torch.arange(out.numel(), device=out.device).view_as(out).float().cos()).sum().backward()
    return out.detach(), {n: p.grad for n, p in params.items()}, x.grad, buffers


def members(make, seed=0):
    torch.manual_seed(seed)
    ms = [make() for _ in range(K)]
    for m in ms:  # members differ in their affine and statistics, as trained members would
        for mod in m.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                with torch.no_grad():
                    if mod.affine:
                        mod.weight.uniform_(0.5, 1.5)
                        mod.bias.uniform_(-0.5, 0.5)
                    if mod.running_mean is not None:
                        mod.running_mean.uniform_(-0.2, 0.2)
                        mod.running_var.uniform_(0.5, 2.0)
    return ms


CASES = {
    "bn2d": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1),
                                   nn.BatchNorm2d(2, momentum=0.3)), (5, 3, 6, 6)),
    "bn1d on (N, C)": (lambda: nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)), (7, 6)),
    "bn1d on (N, C, L)": (lambda: nn.Sequential(nn.Conv1d(2, 4, 3), nn.BatchNorm1d(4)), (5, 2, 9)),
    "no affine": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, affine=False)), (5, 3, 6, 6)),
    "no running statistics": (lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, track_running_stats=False)),
                              (5, 3, 6, 6)),
}


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", list(CASES))
def test_folded_members_equal_torchs_vmap_rule(case, train):
    make, shape = CASES[case]
    torchs = members(make)
    ours = copy.deepcopy(torchs)
    assert all(fold_member_batch_norm(m) >= 1 for m in ours)
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    want = stacked_run(torchs, x, folded=False, train=train)
    got = stacked_run(ours, x, folded=True, train=train)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for name in want[1]:
        # atol: a bias feeding batch norm has a gradient of zero up to rounding (~1e-5 here,
        # against gradients up to ~40)
        torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-4, atol=5e-5, msg=name)
    torch.testing.assert_close(got[2], want[2], rtol=1e-4, atol=1e-5)
    for name in want[3]:  # running statistics and the step counter, updated in place in the stacks
        torch.testing.assert_close(got[3][name], want[3][name], rtol=1e-6, atol=1e-6, msg=name)


def test_channels_last_members_fold_without_copying_the_activations():
    make, shape = CASES["bn2d"]
    torchs = [m.to(memory_format=torch.channels_last) for m in members(make)]
    ours = copy.deepcopy(torchs)
    for m in ours:
        fold_member_batch_norm(m)
    x = torch.randn(*shape).contiguous(memory_format=torch.channels_last)
    want, got = stacked_run(torchs, x, folded=False), stacked_run(ours, x, folded=True)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    for name in want[1]:
        torch.testing.assert_close(got[1][name], want[1][name], rtol=1e-4, atol=5e-5, msg=name)
    copies = {}
    for folded, ms in ((False, torchs), (True, ours)):
        with OpCount() as ops:
            stacked_run(ms, x, folded=folded)
        copies[folded] = sum(ops.counts[op] for op in ("clone", "copy_", "contiguous", "_to_copy"))
    assert copies[True] <= copies[False]  # folding views the activations; it copies none


def test_folded_batch_norm_runs_batch_norms_own_kernels_and_no_separate_affine():
    """One BatchNorm2d layer of K members, forward and backward: torch's vmap rule normalises
    without the affine, fills a dummy weight and bias, and applies and differentiates the affine
    in separate passes; folded, it is one batch norm forward and one backward, as a single trial."""
    def layer():
        return nn.Sequential(nn.BatchNorm2d(4))

    x = torch.randn(5, 4, 3, 3)
    counts = {}
    for folded in (False, True):
        ms = members(layer)
        if folded:
            for m in ms:
                fold_member_batch_norm(m)
        with OpCount() as ops:
            stacked_run(ms, x, folded=folded)
        counts[folded] = ops.counts
    assert counts[True]["native_batch_norm"] == counts[True]["native_batch_norm_backward"] == 1
    assert counts[True]["ones"] == counts[True]["zeros"] == 0
    assert counts[False]["ones"] == counts[False]["zeros"] == 1  # torch's rule: the dummy affine
    affine_ops = ("mul", "add", "sum")
    assert sum(counts[False][op] for op in affine_ops) >= sum(counts[True][op] for op in affine_ops) + 4


def test_outside_the_members_vmap_it_is_torchs_batch_norm():
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(4)
    ours = copy.deepcopy(bn)
    fold_member_batch_norm(ours)
    assert isinstance(ours, MemberBatchNorm2d) and isinstance(ours, nn.BatchNorm2d)
    assert ours.state_dict().keys() == bn.state_dict().keys()
    x = torch.randn(6, 4, 3, 3)
    torch.testing.assert_close(ours(x), bn(x))
    torch.testing.assert_close(ours.running_mean, bn.running_mean)
    assert int(ours.num_batches_tracked) == int(bn.num_batches_tracked) == 1


def test_only_torchs_own_batch_norms_are_switched():
    class Custom(nn.BatchNorm1d):
        pass

    model = nn.Sequential(nn.BatchNorm1d(3), Custom(3), nn.LayerNorm(3), nn.BatchNorm2d(3))
    assert fold_member_batch_norm(model) == 2
    assert [type(m) for m in model] == [MemberBatchNorm1d, Custom, nn.LayerNorm, MemberBatchNorm2d]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")
def test_folded_members_equal_torchs_rule_on_a_gpu_in_bf16_channels_last():
    """What the fused trial runs on a GPU: bf16 autocast, channels_last activations (cuDNN's batch
    norm over K x C channels against torch's rule, within bf16 rounding). Torch's rule runs on
    contiguous tensors: under vmap it refuses channels_last ("NYI: querying is_contiguous inside of
    vmap"), which the folded norm takes."""
    make, shape = CASES["bn2d"]
    torchs = [m.cuda() for m in members(make)]
    ours = [copy.deepcopy(m).to(memory_format=torch.channels_last) for m in torchs]
    for m in ours:
        fold_member_batch_norm(m)
    x = torch.randn(*shape, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        want = stacked_run(torchs, x, folded=False)
        got = stacked_run(ours, x.contiguous(memory_format=torch.channels_last), folded=True)
    torch.testing.assert_close(got[0].float(), want[0].float(), rtol=2e-2, atol=2e-2)
    for name in want[1]:
        scale = want[1][name].abs().max().clamp_min(1.0)
        torch.testing.assert_close(got[1][name] / scale, want[1][name] / scale, rtol=2e-2, atol=2e-2, msg=name)
    for name in want[3]:
        torch.testing.assert_close(got[3][name].float(), want[3][name].float(), rtol=1e-2, atol=1e-2, msg=name)
