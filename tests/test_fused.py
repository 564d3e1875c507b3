"""Fused replicates train exactly as separate ones, and what cannot fuse is refused.

The reference is engine.Training itself, one replicate after another, each
right after its ``torch.manual_seed`` and model build; the fused run builds the
same K models the same way and hands FusedTraining each replicate's global RNG
state at that point. Both draw their augmentation (a random flip from the
global stream, as a per-sample pipeline does) and their dropout masks from that
stream, so each replicate sees the same numbers fused or not: the only
difference left is the order of float sums (a grouped convolution and a bmm
reduce in another order than K separate kernels). Over these steps that is a
few ulps (measured: losses within 5e-7, weights within 2e-7), so
rtol=1e-4/atol=1e-5 leaves room for longer runs and other BLAS builds and none
for a real coupling (dropout masks from one shared stream move the losses by
0.17 here; another replicate's gradient in the update, by far more).
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from sweeps.engine import Training
from sweeps.fused import FusedModel, NotFusable, fuse
from sweeps.fused_training import FusedTraining
from sweeps.models.resnet_cifar import CifarResNet
from sweeps.models.resnet_trunc import TruncatedResNet

SEEDS = (0, 1, 2)
STEPS, BATCH, N = 3, 8, 24
RTOL, ATOL = 1e-4, 1e-5

MODELS = {
    "basic": dict(channels=[8, 16], blocks=[1, 1], head=[], stem_channels=8, image_size=8, pool=2),
    "bottleneck": dict(channels=[4, 8], blocks=[1, 1], head=[], stem_channels=8, block="bottleneck",
                       image_size=8, pool=2),
    "dropout_head": dict(channels=[8, 16], blocks=[1, 1], head=[16], dropout=0.3, stem_channels=8,
                         extra_conv=8, image_size=8, pool=2),
}


@pytest.fixture(autouse=True)
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def make_cfg(**trainer):
    t = dict(precision="fp32", label_smoothing=0.0, epochs=2, patience=None, resume=False, grad_clip=None,
             progress=False, monitor="val_acc")
    t.update(trainer)
    return OmegaConf.create({
        "trainer": t,
        "optim": {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1, "momentum": 0.9,
                  "weight_decay": 5e-4, "nesterov": True},
        "schedule": {"scheduler": {"_target_": "torch.optim.lr_scheduler.CosineAnnealingLR", "_partial_": True,
                                   "T_max": 6}, "interval": "step"},
        "dataset": {"channels": 3, "image_size": 8},
    })


def data(seed: int):
    """A replicate's own data: its own shuffle (own generator), its flips from the global stream."""
    g = torch.Generator().manual_seed(1234)
    images, labels = torch.randn(N, 3, 8, 8, generator=g), torch.randint(0, 10, (N,), generator=g)
    shuffle = torch.Generator().manual_seed(seed)

    def train_batches(epoch):
        perm = torch.randperm(N, generator=shuffle)
        for s in range(STEPS):
            idx = perm[s * BATCH:(s + 1) * BATCH]
            x = images[idx]
            flip = torch.rand(len(idx), 1, 1, 1) < 0.5  # the global stream
            yield torch.where(flip, x.flip(-1), x), labels[idx]

    def val_batches():
        for s in range(0, N, 10):
            yield images[s:s + 10], labels[s:s + 10]

    return train_batches, val_batches, shuffle


def member(cfg, kind: str, seed: int, checkpoint_dir=None) -> Training:
    torch.manual_seed(seed)
    model = TruncatedResNet(**MODELS[kind])
    train_batches, val_batches, shuffle = data(seed)
    return Training(cfg, model, train_batches, STEPS, val_batches, torch.device("cpu"),
                    checkpoint_dir=checkpoint_dir, loader_generator=shuffle, binding=f"seed {seed}")


def recording(training: Training, losses: list):
    orig = training.criterion

    def criterion(logits, y):
        loss = orig(logits, y)
        losses.append(loss.item())
        return loss

    training.criterion = criterion


def separate(cfg, kind):
    out = []
    for seed in SEEDS:
        t = member(cfg, kind, seed)
        losses = []
        recording(t, losses)
        t.run()
        out.append((t, losses))
    return out


def fused(cfg, kind, dirs=None):
    members, states = [], []
    for i, seed in enumerate(SEEDS):
        members.append(member(cfg, kind, seed, dirs[i] if dirs else None))
        states.append({"cpu": torch.get_rng_state()})
    ft = FusedTraining(cfg, members, states)
    losses = []
    ft.on_step = lambda l: losses.append(l.tolist())
    return ft, members, losses


CASES = [("basic", {}), ("bottleneck", {"grad_clip": 0.5}), ("dropout_head", {"label_smoothing": 0.1})]


@pytest.mark.parametrize("kind,trainer", CASES, ids=[c[0] for c in CASES])
def test_fused_trains_each_replicate_as_alone(kind, trainer):
    cfg = make_cfg(**trainer)
    ref = separate(cfg, kind)
    ft, members, losses = fused(cfg, kind)
    history = [ft.epoch() for _ in range(2)]
    assert ft.done and all(m.done for m in members)
    for i, (t, ref_losses) in enumerate(ref):
        got = [step[i] for step in losses]
        assert len(got) == len(ref_losses) == 2 * STEPS
        torch.testing.assert_close(torch.tensor(got), torch.tensor(ref_losses), rtol=RTOL, atol=ATOL)
        for epoch, m in enumerate(t.result.history):
            f = history[epoch][i]
            assert f is members[i].result.history[epoch]
            for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr"):
                assert getattr(f, key) == pytest.approx(getattr(m, key), rel=RTOL, abs=ATOL), (i, epoch, key)
        want = t.model.state_dict()
        for key, value in ft.model.replica_state_dict(i).items():
            torch.testing.assert_close(value, want[key], rtol=RTOL, atol=ATOL, msg=f"replicate {i} {key}")
        assert members[i].result.best_epoch == t.result.best_epoch
        assert set(members[i].best_state) == set(t.best_state)
        # the replicate's own Training holds its final weights, as an unfused run's does
        for key, value in members[i].model.state_dict().items():
            torch.testing.assert_close(value, want[key], rtol=RTOL, atol=ATOL)
    # different seeds: different models (the fusion did not tie them together)
    assert not torch.allclose(ft.model.replica_state_dict(0)["stem.0.weight"], ft.model.replica_state_dict(1)["stem.0.weight"])


def test_dropout_masks_are_each_replicates_own_stream():
    """FusedDropout draws replicate k's mask as CPU F.dropout draws it from the global stream."""
    torch.manual_seed(0)
    plain = nn.Dropout(0.4)
    x = torch.randn(5, 3 * 7)
    gens = [torch.Generator().manual_seed(10 + i) for i in range(3)]
    states = [g.get_state() for g in gens]
    fd = fuse([nn.Sequential(nn.Dropout(0.4), nn.Linear(7, 2)) for _ in range(3)], (7,), check=False)
    fd.set_dropout_generators(gens)
    fd.train()
    drop = fd.dropouts()[0]
    got = drop(x).view(5, 3, 7)
    for i in range(3):
        torch.set_rng_state(states[i])
        assert torch.equal(got[:, i], plain(x.view(5, 3, 7)[:, i].contiguous()))


def test_finished_replicate_stays_as_it_ended():
    """A replicate done early (patience) rides along: its loss is left out, its Training unchanged;
    the others train exactly as before."""
    cfg = make_cfg(epochs=3)
    ref = separate(cfg, "basic")
    ft, members, losses = fused(cfg, "basic")
    ft.epoch()
    members[1].done = True  # as if its patience had run out
    frozen = {k: v.clone() for k, v in members[1].model.state_dict().items()}
    history = list(members[1].result.history)
    ft.run()
    assert members[1].result.history == history
    for k, v in members[1].model.state_dict().items():
        assert torch.equal(v, frozen[k])
    for i in (0, 2):
        got = [step[i] for step in losses]
        torch.testing.assert_close(torch.tensor(got), torch.tensor(ref[i][1]), rtol=RTOL, atol=ATOL)


def test_last_pt_is_the_unfused_format_and_resumes_either_way(tmp_path):
    """Epoch 1 fused writes each replicate's last.pt; epoch 2 resumed unfused from it, and fused from
    all of them, both give the separate runs' epoch 2 (weights, optimizer momentum, schedule, RNG)."""
    cfg = make_cfg(epochs=2)
    ref = separate(cfg, "dropout_head")
    dirs = [tmp_path / f"r{i}" for i in range(3)]
    for d in dirs:
        d.mkdir()
    ft, _, _ = fused(cfg, "dropout_head", dirs)
    ft.epoch()
    resumed = make_cfg(epochs=2, resume=True)
    for i, seed in enumerate(SEEDS):
        alone = member(resumed, "dropout_head", seed, dirs[i])
        assert alone.result.epochs_run == 1
        losses = []
        recording(alone, losses)
        alone.run()
        torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref[i][1][STEPS:]), rtol=RTOL, atol=ATOL)
    for i in range(3):  # back to epoch 1's checkpoints: rerun epoch 1 fused
        (dirs[i] / "last.pt").unlink()
    ft, _, _ = fused(cfg, "dropout_head", dirs)
    ft.epoch()
    again, members, losses = fused(resumed, "dropout_head", dirs)
    assert [m.result.epochs_run for m in members] == [1, 1, 1]
    again.run()
    for i in range(3):
        torch.testing.assert_close(torch.tensor([s[i] for s in losses]), torch.tensor(ref[i][1][STEPS:]),
                                   rtol=RTOL, atol=ATOL)
        want = ref[i][0].model.state_dict()
        for key, value in again.model.replica_state_dict(i).items():
            torch.testing.assert_close(value, want[key], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", list(MODELS))
def test_replica_state_dict_loads_into_the_unfused_model(kind):
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(TruncatedResNet(**MODELS[kind]))
    fm = fuse(models, (3, 8, 8))
    # train mode once so that the running statistics are no longer the initial ones
    fm.train()
    fm(torch.randn(4, 9, 8, 8))
    fm.eval()
    x = torch.randn(6, 3, 8, 8)
    logits = fm(FusedModel.stack([x] * 3))
    for i in range(3):
        torch.manual_seed(99)
        plain = TruncatedResNet(**MODELS[kind])
        plain.load_state_dict(fm.replica_state_dict(i), strict=True)
        plain.eval()
        torch.testing.assert_close(plain(x), logits[i], rtol=RTOL, atol=ATOL)
    # and back: a replicate loaded from a plain model is that model
    first = fm.replica_state_dict(0)
    fm.load_replica_state_dict(2, first)
    for key, value in fm.replica_state_dict(2).items():
        assert torch.equal(value, first[key])
    with pytest.raises(ValueError, match="num_batches_tracked is shared"):
        fm.load_replica_state_dict(1, models[1].state_dict())  # a step behind the others


def test_per_replicate_grad_clip_matches_clip_grad_norm():
    models = []
    for seed in SEEDS:
        torch.manual_seed(seed)
        models.append(TruncatedResNet(**MODELS["basic"]))
    fm = fuse(models, (3, 8, 8))
    xs = [torch.randn(4, 3, 8, 8) * (1 + 10 * i) for i in range(3)]  # very different norms
    fm(FusedModel.stack(xs)).sum().backward()
    norms = fm.clip_grad_norm_(1.0)
    for i, (m, x) in enumerate(zip(models, xs)):
        m(x).sum().backward()
        want = nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        torch.testing.assert_close(norms[i], want, rtol=RTOL, atol=ATOL)
        names = dict(fm.body.named_parameters())
        for name, p in m.named_parameters():
            torch.testing.assert_close(fm.split(name, names[name].grad, i), p.grad, rtol=RTOL, atol=ATOL)


def test_option_a_and_b_resnets_fuse_and_match_the_originals():
    """He's ResNet-n: option A's zero-padded channels are padded per replicate (fuse's self-check
    compares the fused forward with each original), and option B's projection fuses as convs."""
    torch.manual_seed(0)
    for option in ("A", "B"):
        models = [CifarResNet(8, option, image_size=8) for _ in range(3)]
        fm = fuse(models, (3, 8, 8))
        xs = [torch.randn(4, 3, 8, 8) for _ in models]
        fm.eval()
        for m in models:
            m.eval()
        with torch.no_grad():
            out = fm(FusedModel.stack(xs))
            for i, (m, x) in enumerate(zip(models, xs)):
                torch.testing.assert_close(out[i], m(x), rtol=RTOL, atol=ATOL)


class ChannelMean(nn.Module):
    """A container whose forward mixes channels: only the self-check can see it."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        return (y - y.mean(1, keepdim=True)).flatten(1)


class ChannelPad(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return torch.nn.functional.pad(self.conv(x), (0, 0, 0, 0, 0, 2)).mean((2, 3))


def test_unsafe_models_are_refused_with_a_reason():
    with pytest.raises(NotFusable, match="mixes channels across replicates"):
        fuse([ChannelMean() for _ in range(3)], (3, 4, 4))
    with pytest.raises(NotFusable, match="shape"):
        fuse([ChannelPad() for _ in range(3)], (3, 4, 4))
    with pytest.raises(NotFusable, match="differs in architecture .*layers"):
        fuse([TruncatedResNet(**MODELS["basic"]), TruncatedResNet(**MODELS["bottleneck"])], (3, 8, 8))
    with pytest.raises(NotFusable, match="LayerNorm is not a layer that fuses"):
        fuse([nn.Sequential(nn.Flatten(), nn.LayerNorm(12)) for _ in range(2)], (3, 2, 2))
    with pytest.raises(NotFusable, match="Flatten"):
        fuse([nn.Sequential(nn.Flatten(0)) for _ in range(2)], (3, 2, 2))


@pytest.mark.parametrize("change,reason", [
    (lambda c: c.schedule.update({"scheduler": {"_target_": "torch.optim.lr_scheduler.ReduceLROnPlateau",
                                                "_partial_": True}, "interval": "epoch"}), "ReduceLROnPlateau"),
    (lambda c: c.update({"optim": {"_target_": "torch.optim.LBFGS", "_partial_": True}}), "LBFGS"),
    (lambda c: c.trainer.update({"precision": "fp16"}), "fp16"),
], ids=["plateau", "lbfgs", "fp16"])
def test_coupling_settings_are_refused(change, reason):
    cfg = make_cfg()
    change(cfg)
    with pytest.raises(NotFusable, match=reason):
        fused(cfg, "basic")
