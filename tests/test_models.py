"""Every seed model builds from its config, with the seeds' exact parameter counts."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from sweeps.errors import ConfigError
from sweeps.models import build_model, count_parameters
from sweeps.paths import CONF_DIR

L3 = "model=trunc_l3_pool8"
BEST = "model=resnet18_trunc"

# (overrides, exact count) for every main-seed table row with an integer count,
# plus the other seeds' models.
EXACT = [
    ([BEST], 4_779_530),
    ([L3], 2_777_674),
    ([L3, "model.channels=[32,64,128,256]", "model.blocks=[2,2,2,2]", "model.pool=4"], 2_809_866),
    ([L3, "model.channels=[16,32,64,128,256]", "model.blocks=[2,2,2,2,2]", "model.pool=2"], 2_811_818),
    ([L3, "model.blocks=[2,3,3]"], 4_253_770),
    ([L3, "model.blocks=[3,3,3]"], 4_327_754),
    ([L3, "model.blocks=[2,4,3]"], 4_549_194),
    ([L3, "model.blocks=[3,5,3]"], 4_918_602),
    (
        [L3, "model.blocks=[2,3,2]", "model.stem_kernel=5",
         "model.kernel_sizes=[[1,5,1,5],[1,5,1,1,5,1,5],[1,5,1,1,5]]"],
        4_911_178,
    ),
    ([L3, "model.blocks=[3,3,3]", "model.block=bottleneck"], 4_914_250),
    ([L3, "model.blocks=[1,3,1]", "model.kernel_sizes=5"], 4_964_170),
    ([L3, "model.blocks=[2,4,3]", "model.pool=4"], 4_556_874),
    ([L3, "model.blocks=[3,5,3]", "model.pool=4"], 4_926_282),
    ([L3, "model.blocks=[3,5,3]", "model.pool=2"], 4_957_002),
    ([BEST, "model.head=[128,64]"], 4_787_146),
    ([BEST, "model.head=[128,64]", "model.dropout=0.2"], 4_787_146),
    ([BEST, "model.head=[128,64]", "model.dropout=0.5"], 4_787_146),
    (["model=resnet32"], 464_154),
    (["model=resnet_cifar", "model.depth=32"], 464_154),
    (["model=resnet20"], 269_722),
    (["model=resnet56"], 853_018),
    (["model=resnet110"], 1_727_962),
    (["model=custom_resnet"], 6_573_130),
    (["model=custom_resnet", "model.norm=layer"], 6_573_130),
    (["model=resnet18_modified"], 11_178_762),
    (["model=resnet_cifar100", "dataset=cifar100"], 1_340_260),
    (["model=resnet34"], 21_289_802),
    (["model=resnet18_finetune"], 11_181_642),
]

# The "Adding More Layers" rows are given in millions only.
ROUNDED = [
    ([L3, "model.extra_conv=512"], "3.96M"),
    ([L3, "model.extra_conv=512", "model.head=[256,128]"], "4.12M"),
    ([L3, "model.extra_conv=512", "model.head=[256,128]", "model.dropout=0.2", "model.dropout_layers=2"], "4.12M"),
    ([L3, "model.extra_conv=512", "model.head=[256,128]", "model.dropout=0.2"], "4.12M"),
    ([L3, "model.extra_conv=512", "model.dropout=0.2"], "3.96M"),
    ([L3, "model.channels=[64,128,326]", "model.pool=4", "model.head=[512,256]", "model.dropout=0.2"], "4.77M"),
]

GREY = "dataset=digits dataset.channels=1"  # a one-channel input, whatever digits.yaml says

MODELS = [
    "resnet18_trunc", "trunc_l3_pool8", "resnet_cifar", "resnet20", "resnet32", "resnet56", "resnet110",
    "resnet34", "resnet18_modified", "custom_resnet", "resnet_cifar100", "resnet18_finetune",
]
# resnet56/110 are resnet20/32 with more blocks: counted above, not worth a slow forward.
FORWARD = [m for m in MODELS if m not in ("resnet56", "resnet110")]


@pytest.fixture(scope="module", autouse=True)
def _hydra():
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        yield


def _cfg(overrides):
    if not any(o.startswith("dataset=") for o in overrides):
        overrides = [*overrides, "dataset=cifar10"]
    return compose("train", overrides=list(overrides))


def _count(overrides) -> int:
    return count_parameters(build_model(_cfg(overrides), for_counting=True))


@pytest.mark.parametrize("overrides,expected", EXACT, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_exact_parameter_counts(overrides, expected):
    assert _count(overrides) == expected


@pytest.mark.parametrize("overrides,expected", ROUNDED, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_rounded_parameter_counts(overrides, expected):
    assert f"{_count(overrides) / 1e6:.2f}M" == expected


@pytest.mark.parametrize("dataset", ["dataset=cifar10", "dataset=digits", "dataset=cifar100", GREY])
@pytest.mark.parametrize("model", FORWARD)
def test_forward_shape(model, dataset):
    overrides = [f"model={model}", *dataset.split()]
    if model == "resnet18_modified" and dataset == GREY:
        overrides += ["model.mean=[0.3052]", "model.std=[0.3236]"]
    if model == "resnet18_finetune":
        overrides += ["model.pretrained=false", "model.upsample=64"]  # 224 works too, just slower
    cfg = _cfg(overrides)
    model_ = build_model(cfg).eval()
    with torch.no_grad():
        out = model_(torch.randn(2, cfg.dataset.channels, 32, 32))
    assert out.shape == (2, cfg.dataset.num_classes)


def test_trunc_variants_forward():
    """One forward per structurally different row (layers, kernels, bottleneck, extra conv, head)."""
    variants = [EXACT[i][0] for i in (3, 8, 9, 10)] + [ROUNDED[i][0] for i in (2, 5)]
    for overrides in variants:
        model = build_model(_cfg(overrides)).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10), overrides


def test_resnet_cifar_option_b_and_upsample_224():
    assert _count(["model=resnet32", "model.shortcut=B"]) == 466_906
    model = build_model(_cfg(["model=resnet18_finetune", "model.pretrained=false"])).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_finetune_trains_only_layer4_and_fc():
    model = build_model(_cfg(["model=resnet18_finetune", "model.pretrained=false"]), for_counting=True)
    trainable = {n.split(".")[1] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"layer4", "fc"}


@pytest.mark.parametrize(
    "overrides,key",
    [
        ([L3, "model.blocks=[2,2]"], "model.blocks"),
        ([L3, "model.kernel_sizes=4"], "model.kernel_sizes"),
        ([L3, "model.kernel_sizes=[3,3]"], "model.kernel_sizes"),
        ([L3, "model.kernel_sizes=[[1,5,1],3,3]"], "model.kernel_sizes"),
        ([L3, "model.stem_kernel=2"], "model.stem_kernel"),
        ([L3, "model.pool=16"], "model.pool"),
        ([BEST, "model.pool=8"], "model.pool"),
        ([L3, "model.dropout=1.0"], "model.dropout"),
        ([L3, "model.dropout=-0.1"], "model.dropout"),
        ([L3, "model.dropout=0.2", "model.dropout_layers=2"], "model.dropout_layers"),
        ([L3, "model.block=bottleneckk"], "model.block"),
        (["model=resnet_cifar", "model.depth=33"], "model.depth"),
        (["model=resnet_cifar", "model.shortcut=C"], "model.shortcut"),
        (["model=custom_resnet", "model.norm=instance"], "model.norm"),
        (["model=resnet_cifar100", "model.repeats=[2,4,4]"], "model.channels"),
        (["model=resnet_cifar100", "model.pool=8"], "model.pool"),
        (["model=resnet_cifar100", "model.dropout=1.5"], "model.dropout"),
        (["model=resnet18_modified", *GREY.split()], "model.mean"),
        (["model=resnet34", "model.arch=resnet35"], "model.arch"),
        (["model=resnet18_finetune", "model.pretrained=false", "model.trainable=[layer5]"], "model.trainable"),
    ],
)
def test_config_errors_name_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        build_model(_cfg(overrides), for_counting=True)


def test_pretrained_without_network_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: a download is attempted
    with pytest.raises(ConfigError, match=r"model\.pretrained=false"):
        build_model(_cfg(["model=resnet18_finetune"]))


def test_pretrained_from_cache_adapts_one_channel_input(tmp_path, monkeypatch):
    """A cached checkpoint is used without network; a grey input gets summed RGB filters."""
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    state = torchvision.models.resnet18().state_dict()
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(state, tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1])
    model = build_model(_cfg(["model=resnet18_finetune", *GREY.split(), "model.upsample=64"]))
    assert torch.allclose(model.net.conv1.weight, state["conv1.weight"].sum(1, keepdim=True))
    assert torch.equal(model.net.layer1[0].conv1.weight, state["layer1.0.conv1.weight"])
    with torch.no_grad():
        assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)


def test_adding_more_layers_dropout_placement():
    def dropouts(overrides):
        model = build_model(_cfg(overrides), for_counting=True)
        return [type(m).__name__ for m in model.head]

    base = [L3, "model.extra_conv=512", "model.head=[256,128]", "model.dropout=0.2"]
    assert dropouts([*base, "model.dropout_layers=2"]) == [
        "Flatten", "Dropout", "Linear", "ReLU", "Dropout", "Linear", "ReLU", "Linear"
    ]
    assert dropouts(base).count("Dropout") == 3


def test_every_model_config_passes_the_config_checks():
    from sweeps.config import validate

    for overrides in [[f"model={m}"] for m in MODELS] + [o for o, _ in ROUNDED]:
        validate(_cfg(overrides))
