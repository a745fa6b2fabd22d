"""The authors' CIFAR checkpoints (RepDistiller / mdistiller model zoo) load as they are.

Each family's state dict is written here in the authors' key names and shapes, from their
architectures' structure (not from our models), filled with random tensors, saved the way their
training scripts save it (under ``model``), and loaded through ``load_checkpoint``. A reference
forward pass written directly on the authors' tensors (``torch.nn.functional``) must then give the
logits our model gives: a tensor landing on the wrong parameter changes them.
"""
from __future__ import annotations

import math

import pytest
import torch
from torch.nn import functional as F

from trainables.models import create_model
from trainables.models.checkpoint import load_checkpoint

NUM_CLASSES = 100
BN_FIELDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


# ------------------------------------------------------------------ the authors' key names and shapes


def _bn(prefix: str, c: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{f}": ((c,) if f != "num_batches_tracked" else ()) for f in BN_FIELDS}


def resnet_keys(depth: int, widths: tuple[int, int, int, int]) -> dict[str, tuple[int, ...]]:
    """RepDistiller ``resnet<depth>``: ``conv1 bn1``, ``layer1..3`` of BasicBlocks ``conv1 bn1 conv2
    bn2`` with ``downsample.0/.1`` where width or stride change, ``fc``."""
    n = (depth - 2) // 6
    keys = {"conv1.weight": (widths[0], 3, 3, 3), **_bn("bn1", widths[0])}
    cin = widths[0]
    for s in (1, 2, 3):
        cout = widths[s]
        for b in range(n):
            p = f"layer{s}.{b}"
            keys[f"{p}.conv1.weight"] = (cout, cin, 3, 3)
            keys.update(_bn(f"{p}.bn1", cout))
            keys[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            keys.update(_bn(f"{p}.bn2", cout))
            if b == 0 and (s > 1 or cin != cout):
                keys[f"{p}.downsample.0.weight"] = (cout, cin, 1, 1)
                keys.update(_bn(f"{p}.downsample.1", cout))
            cin = cout
    keys.update({"fc.weight": (NUM_CLASSES, widths[3]), "fc.bias": (NUM_CLASSES,)})
    return keys


VGG_CFG = {"vgg8": [[64], [128], [256], [512], [512]],
           "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
           "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
           "vgg16": [[64, 64], [128, 128], [256] * 3, [512] * 3, [512] * 3],
           "vgg19": [[64, 64], [128, 128], [256] * 4, [512] * 4, [512] * 4]}


def vgg_keys(cfg: list[list[int]]) -> dict[str, tuple[int, ...]]:
    """RepDistiller ``vgg*_bn``: ``block0..4`` Sequentials of (conv with bias, bn, relu) — so convs at
    0, 3, 6 … and bns at 1, 4, 7 … — and ``classifier``."""
    keys, cin = {}, 3
    for g, widths in enumerate(cfg):
        for j, cout in enumerate(widths):
            keys[f"block{g}.{3 * j}.weight"] = (cout, cin, 3, 3)
            keys[f"block{g}.{3 * j}.bias"] = (cout,)
            keys.update(_bn(f"block{g}.{3 * j + 1}", cout))
            cin = cout
    keys.update({"classifier.weight": (NUM_CLASSES, 512), "classifier.bias": (NUM_CLASSES,)})
    return keys


def wrn_keys(depth: int, widen: int) -> dict[str, tuple[int, ...]]:
    """RepDistiller ``wrn_<depth>_<widen>``: ``conv1``, ``block1..3.layer.N`` of pre-activation blocks
    ``bn1 conv1 bn2 conv2`` (+ ``convShortcut`` where in != out), final ``bn1``, ``fc``."""
    n = (depth - 4) // 6
    ch = (16, 16 * widen, 32 * widen, 64 * widen)
    keys = {"conv1.weight": (16, 3, 3, 3)}
    for s in (1, 2, 3):
        for b in range(n):
            cin, cout = (ch[s - 1] if b == 0 else ch[s]), ch[s]
            p = f"block{s}.layer.{b}"
            keys.update(_bn(f"{p}.bn1", cin))
            keys[f"{p}.conv1.weight"] = (cout, cin, 3, 3)
            keys.update(_bn(f"{p}.bn2", cout))
            keys[f"{p}.conv2.weight"] = (cout, cout, 3, 3)
            if cin != cout:
                keys[f"{p}.convShortcut.weight"] = (cout, cin, 1, 1)
    keys.update(_bn("bn1", ch[3]))
    keys.update({"fc.weight": (NUM_CLASSES, ch[3]), "fc.bias": (NUM_CLASSES,)})
    return keys


# mobile_half: (t, c, n, s) at width 0.5, expansion 6.
MV2_SETTING = ((1, 8, 1, 1), (6, 12, 2, 1), (6, 16, 3, 2), (6, 32, 4, 2), (6, 48, 3, 1), (6, 80, 3, 2), (6, 160, 1, 1))


def mobilenetv2_keys() -> dict[str, tuple[int, ...]]:
    """RepDistiller ``mobile_half``: ``conv1.0/.1`` stem, ``blocks.S.B.conv`` flat Sequentials
    (conv 0, bn 1, conv 3, bn 4, conv 6, bn 7), ``conv2.0/.1`` to 1280, ``classifier.0``."""
    keys = {"conv1.0.weight": (16, 3, 3, 3), **_bn("conv1.1", 16)}
    cin = 16
    for s, (t, c, n, _) in enumerate(MV2_SETTING):
        for b in range(n):
            p, hid = f"blocks.{s}.{b}.conv", cin * t
            keys[f"{p}.0.weight"] = (hid, cin, 1, 1)
            keys.update(_bn(f"{p}.1", hid))
            keys[f"{p}.3.weight"] = (hid, 1, 3, 3)
            keys.update(_bn(f"{p}.4", hid))
            keys[f"{p}.6.weight"] = (c, hid, 1, 1)
            keys.update(_bn(f"{p}.7", c))
            cin = c
    keys["conv2.0.weight"] = (1280, cin, 1, 1)
    keys.update(_bn("conv2.1", 1280))
    keys.update({"classifier.0.weight": (NUM_CLASSES, 1280), "classifier.0.bias": (NUM_CLASSES,)})
    return keys


def shufflev1_keys() -> dict[str, tuple[int, ...]]:
    """RepDistiller ``ShuffleV1`` (groups 3, 240/480/960, 4/8/4 units): ``conv1 bn1`` 1x1 stem to 24,
    ``layer1..3`` units ``conv1 bn1 conv2 bn2 conv3 bn3`` (a stride-2 unit makes out - in channels;
    the first 1x1 is ungrouped on the 24-channel stem), ``linear``."""
    keys = {"conv1.weight": (24, 3, 1, 1), **_bn("bn1", 24)}
    cin = 24
    for s, (width, n) in enumerate(zip((240, 480, 960), (4, 8, 4)), start=1):
        for b in range(n):
            out = width - (cin if b == 0 else 0)
            mid, g = out // 4, (1 if cin == 24 else 3)
            p = f"layer{s}.{b}"
            keys[f"{p}.conv1.weight"] = (mid, cin // g, 1, 1)
            keys.update(_bn(f"{p}.bn1", mid))
            keys[f"{p}.conv2.weight"] = (mid, 1, 3, 3)
            keys.update(_bn(f"{p}.bn2", mid))
            keys[f"{p}.conv3.weight"] = (out, mid // 3, 1, 1)
            keys.update(_bn(f"{p}.bn3", out))
            cin = width
    keys.update({"linear.weight": (NUM_CLASSES, 960), "linear.bias": (NUM_CLASSES,)})
    return keys


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(7)
        elif key.endswith("running_var") or (len(shape) == 1 and key.endswith("weight")):
            state[key] = 0.5 + torch.rand(shape, generator=g)  # bn scale, variance: positive, around 1
        elif len(shape) == 1:
            state[key] = 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_in)
    return state


# ------------------------------------------------------------------ reference forwards on the authors' tensors


def _bnf(x, sd, p):
    return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                        training=False, eps=1e-5)


def _shuffle(x, g):
    n, c, h, w = x.shape
    return x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, c, h, w)


def ref_resnet(sd, x):
    x = F.relu(_bnf(F.conv2d(x, sd["conv1.weight"], padding=1), sd, "bn1"))
    for s in (1, 2, 3):
        b = 0
        while f"layer{s}.{b}.conv1.weight" in sd:
            p, stride = f"layer{s}.{b}", (2 if s > 1 and b == 0 else 1)
            out = F.relu(_bnf(F.conv2d(x, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn1"))
            out = _bnf(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), sd, f"{p}.bn2")
            if f"{p}.downsample.0.weight" in sd:
                x = _bnf(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), sd, f"{p}.downsample.1")
            x = F.relu(out + x)
            b += 1
    return F.linear(F.avg_pool2d(x, 8).flatten(1), sd["fc.weight"], sd["fc.bias"])


def ref_vgg(sd, x):
    for g in range(5):
        j = 0
        while f"block{g}.{j}.weight" in sd:
            x = F.conv2d(x, sd[f"block{g}.{j}.weight"], sd[f"block{g}.{j}.bias"], padding=1)
            x = F.relu(_bnf(x, sd, f"block{g}.{j + 1}"))
            j += 3
        if g < 3:  # 32 px: the fourth pool is skipped
            x = F.max_pool2d(x, 2)
    return F.linear(F.adaptive_avg_pool2d(x, 1).flatten(1), sd["classifier.weight"], sd["classifier.bias"])


def ref_wrn(sd, x):
    x = F.conv2d(x, sd["conv1.weight"], padding=1)
    for s in (1, 2, 3):
        b = 0
        while f"block{s}.layer.{b}.conv1.weight" in sd:
            p = f"block{s}.layer.{b}"
            stride = 2 if s > 1 and b == 0 else 1
            act = F.relu(_bnf(x, sd, f"{p}.bn1"))
            out = F.relu(_bnf(F.conv2d(act, sd[f"{p}.conv1.weight"], stride=stride, padding=1), sd, f"{p}.bn2"))
            out = F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1)
            short = sd.get(f"{p}.convShortcut.weight")
            x = out + (F.conv2d(act, short, stride=stride) if short is not None else x)
            b += 1
    x = F.relu(_bnf(x, sd, "bn1"))
    return F.linear(F.avg_pool2d(x, 8).flatten(1), sd["fc.weight"], sd["fc.bias"])


def ref_mobilenetv2(sd, x):
    x = F.relu(_bnf(F.conv2d(x, sd["conv1.0.weight"], stride=2, padding=1), sd, "conv1.1"))
    for s, (_, _, n, stride0) in enumerate(MV2_SETTING):
        for b in range(n):
            p, stride = f"blocks.{s}.{b}.conv", (stride0 if b == 0 else 1)
            h = F.relu(_bnf(F.conv2d(x, sd[f"{p}.0.weight"]), sd, f"{p}.1"))
            h = F.relu(_bnf(F.conv2d(h, sd[f"{p}.3.weight"], stride=stride, padding=1, groups=h.shape[1]),
                            sd, f"{p}.4"))
            h = _bnf(F.conv2d(h, sd[f"{p}.6.weight"]), sd, f"{p}.7")
            x = x + h if stride == 1 and x.shape[1] == h.shape[1] else h
    x = F.relu(_bnf(F.conv2d(x, sd["conv2.0.weight"]), sd, "conv2.1"))
    return F.linear(F.avg_pool2d(x, 2, ceil_mode=True).flatten(1), sd["classifier.0.weight"], sd["classifier.0.bias"])


def ref_shufflev1(sd, x):
    x = F.relu(_bnf(F.conv2d(x, sd["conv1.weight"]), sd, "bn1"))
    for s, n in zip((1, 2, 3), (4, 8, 4)):
        for b in range(n):
            p, stride = f"layer{s}.{b}", (2 if b == 0 else 1)
            g = 1 if x.shape[1] == 24 else 3
            out = F.relu(_bnf(F.conv2d(x, sd[f"{p}.conv1.weight"], groups=g), sd, f"{p}.bn1"))
            out = _shuffle(out, g)
            out = F.relu(_bnf(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1, groups=out.shape[1]),
                              sd, f"{p}.bn2"))
            out = _bnf(F.conv2d(out, sd[f"{p}.conv3.weight"], groups=3), sd, f"{p}.bn3")
            x = F.relu(torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1) if stride == 2 else out + x)
    return F.linear(F.avg_pool2d(x, 4).flatten(1), sd["linear.weight"], sd["linear.bias"])


# ------------------------------------------------------------------ the zoo

SMALL = (16, 16, 32, 64)
X4 = (32, 64, 128, 256)
ZOO = {
    **{f"resnet{d}": (lambda d=d: resnet_keys(d, SMALL), ref_resnet) for d in (8, 14, 20, 32, 44, 56, 110)},
    "resnet8x4": (lambda: resnet_keys(8, X4), ref_resnet),
    "resnet32x4": (lambda: resnet_keys(32, X4), ref_resnet),
    **{name: (lambda cfg=cfg: vgg_keys(cfg), ref_vgg) for name, cfg in VGG_CFG.items()},
    **{f"wrn_{d}_{k}": (lambda d=d, k=k: wrn_keys(d, k), ref_wrn) for d, k in ((16, 1), (16, 2), (40, 1), (40, 2))},
    "mobilenetv2": (mobilenetv2_keys, ref_mobilenetv2),
    "shufflenetv1": (shufflev1_keys, ref_shufflev1),
}


def _save(tmp_path, state, name="ckpt_epoch_240.pth"):
    path = tmp_path / name
    torch.save({"epoch": 240, "model": state, "best_acc": 0.0}, path)  # how RepDistiller/mdistiller save
    return str(path)


def test_hand_written_key_lists_spot_checks():
    """A few keys and counts spelled out, so the generators above are checked too."""
    r20 = resnet_keys(20, SMALL)
    assert len([k for k in r20 if k.endswith(".weight") and len(r20[k]) == 4]) == 19 + 2  # 19 3x3 convs, 2 projections
    assert r20["layer2.0.downsample.0.weight"] == (32, 16, 1, 1) and "layer1.0.downsample.0.weight" not in r20
    assert r20["layer3.2.conv2.weight"] == (64, 64, 3, 3) and "layer3.3.conv1.weight" not in r20
    assert len([k for k in resnet_keys(56, SMALL) if k.endswith("conv1.weight")]) == 1 + 27
    r32x4 = resnet_keys(32, X4)
    assert r32x4["layer1.0.downsample.0.weight"] == (64, 32, 1, 1) and r32x4["fc.weight"] == (NUM_CLASSES, 256)
    assert "layer1.4.bn2.running_var" in r32x4 and "layer1.5.bn2.running_var" not in r32x4
    assert set(resnet_keys(8, X4)) >= {"layer3.0.downsample.1.num_batches_tracked", "layer3.0.conv2.weight"}
    assert [k for k in vgg_keys(VGG_CFG["vgg8"]) if k.endswith("bias") and "." in k[:8]][:2] == ["block0.0.bias",
                                                                                              "block0.1.bias"]
    v13 = vgg_keys(VGG_CFG["vgg13"])
    assert v13["block0.3.weight"] == (64, 64, 3, 3) and v13["block4.4.running_mean"] == (512,)
    w = wrn_keys(40, 2)
    assert w["block1.layer.0.convShortcut.weight"] == (32, 16, 1, 1) and "block1.layer.1.convShortcut.weight" not in w
    assert w["block3.layer.5.conv2.weight"] == (128, 128, 3, 3) and w["bn1.weight"] == (128,)
    assert "block1.layer.0.convShortcut.weight" not in wrn_keys(40, 1)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_authors_checkpoint_loads_and_gives_their_logits(tmp_path, name):
    shapes_of, reference = ZOO[name]
    state = random_state(shapes_of())
    model = create_model(name, num_classes=NUM_CLASSES, input_shape=(3, 32, 32), checkpoint=_save(tmp_path, state))
    model.eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(x)
        theirs = reference(state, x)
    scale = float(theirs.abs().max())
    assert scale > 1e-3  # a meaningful comparison, not two zero vectors
    # deep random nets amplify float32 rounding; a misplaced tensor changes logits by O(scale)
    torch.testing.assert_close(ours, theirs, rtol=1e-3, atol=1e-4 * scale)
    # BatchNorm buffers (not seen by a forward in training mode) land too
    own = model.state_dict()
    assert sum(int(v.sum()) for k, v in own.items() if k.endswith("num_batches_tracked")) == 7 * sum(
        k.endswith("num_batches_tracked") for k in state)


def test_authors_file_without_bn_counters_loads(tmp_path):
    """Files written by PyTorch before 0.4.1 have no ``num_batches_tracked``."""
    state = {k: v for k, v in random_state(resnet_keys(20, SMALL)).items() if not k.endswith("num_batches_tracked")}
    model = create_model("resnet20", num_classes=NUM_CLASSES, input_shape=(3, 32, 32),
                         checkpoint=_save(tmp_path, state)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref_resnet(state, x), rtol=1e-4, atol=1e-4)


def test_authors_file_on_another_label_space_keeps_a_fresh_head(tmp_path):
    path = _save(tmp_path, random_state(resnet_keys(56, SMALL)))
    model = create_model("resnet56", num_classes=10, input_shape=(3, 32, 32))
    assert sorted(load_checkpoint(model, path)) == ["head.bias", "head.weight"]


def test_keys_of_no_known_naming_are_an_error_naming_model_keys_and_namings(tmp_path):
    state = random_state(resnet_keys(20, SMALL))
    state["layer1.0.conv1.weight_orig"] = state.pop("layer1.0.conv1.weight")  # e.g. a pruning wrapper's names
    with pytest.raises(ValueError) as info:
        create_model("resnet20", num_classes=NUM_CLASSES, input_shape=(3, 32, 32), checkpoint=_save(tmp_path, state))
    message = str(info.value)
    assert "'resnet20'" in message and "match no known naming" in message
    assert "tried ours, RepDistiller/mdistiller" in message
    assert "layer1.0.conv1.weight_orig" in message


def test_a_deeper_authors_file_is_no_known_naming_of_a_shallower_model(tmp_path):
    """Detection is by the whole key set: resnet56's keys are not resnet20's."""
    with pytest.raises(ValueError, match=r"match no known naming of model 'resnet20'.*layer1\.3\."):
        create_model("resnet20", num_classes=NUM_CLASSES, input_shape=(3, 32, 32),
                     checkpoint=_save(tmp_path, random_state(resnet_keys(56, SMALL))))


def test_authors_naming_with_wrong_shapes_is_a_shape_error(tmp_path):
    """resnet8's keys are resnet8x4's; the widths are not."""
    with pytest.raises(ValueError, match=r"RepDistiller/mdistiller key names.*shape mismatch"):
        create_model("resnet8x4", num_classes=NUM_CLASSES, input_shape=(3, 32, 32),
                     checkpoint=_save(tmp_path, random_state(resnet_keys(8, SMALL))))


def test_own_naming_still_loads(tmp_path):
    model = create_model("wrn_16_2", num_classes=NUM_CLASSES, input_shape=(3, 32, 32))
    path = tmp_path / "own.pt"
    torch.save(model.state_dict(), path)
    again = create_model("wrn_16_2", num_classes=NUM_CLASSES, input_shape=(3, 32, 32), checkpoint=str(path))
    for k, v in model.state_dict().items():
        torch.testing.assert_close(again.state_dict()[k], v)
