"""torchvision's ImageNet ResNets: seed 001's ResNet-34 and seed 004's fine-tuned ResNet-18.

A thin wrapper rather than a re-implementation, so that ImageNet weights load
without key remapping. It adds what the seeds do around the network:
``upsample`` resizes CIFAR's 32x32 inputs inside the model (the size the
weights were trained at, without a second data pipeline), ``trainable`` freezes
every top-level child not listed (seed 004 trains only layer4 and fc), and a
non-RGB input gets a new first conv.

Weights are downloaded only when ``pretrained=true`` and never when counting
parameters (``build_model`` forces ``pretrained=false`` then).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence

import torch
import torchvision
from torch import nn

from sweeps.errors import ConfigError, close_matches

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
DOWNLOAD_TIMEOUT_S = 30  # per socket operation; a missing network fails fast instead of hanging


def _load_pretrained(arch: str) -> nn.Module:
    weights = torchvision.models.get_model_weights(arch).IMAGENET1K_V1
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        return torchvision.models.get_model(arch, weights=weights)
    except (OSError, RuntimeError, ValueError) as e:
        cache = f"{torch.hub.get_dir()}/checkpoints"
        raise ConfigError(
            f"model.pretrained=true but the ImageNet weights for {arch} ({weights}) could not be "
            f"downloaded from {weights.url}: {e}. torchvision caches them in {cache} (under "
            f"TORCH_HOME, default ~/.cache/torch): copying {weights.url.rsplit('/', 1)[-1]} there "
            "from a machine with network access makes this work offline. Or train from scratch "
            "with model.pretrained=false, which needs no download."
        ) from None
    finally:
        socket.setdefaulttimeout(previous)


class TorchvisionResNet(nn.Module):
    def __init__(
        self,
        arch: str = "resnet34",
        pretrained: bool = False,
        upsample: int | None = None,
        trainable: Sequence[str] | None = None,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 32,
    ):
        super().__init__()
        if arch not in ARCHS:
            raise ConfigError(
                f"model.arch={arch!r} is not a torchvision ResNet; use one of "
                f"{', '.join(ARCHS)}.{close_matches(str(arch), ARCHS)}"
            )
        if upsample is not None and upsample < 1:
            raise ConfigError(f"model.upsample={upsample} must be a positive image size (e.g. 224) or null.")
        if image_size < 32 and not upsample:
            raise ConfigError(
                f"dataset.image_size={image_size} is too small for an ImageNet ResNet (it downsamples "
                "32x); set model.upsample=224 (or at least 32)."
            )
        self.upsample = nn.Upsample(size=(upsample, upsample), mode="bilinear", align_corners=False) if upsample else nn.Identity()
        if pretrained:
            net = _load_pretrained(arch)
            net.fc = nn.Linear(net.fc.in_features, num_classes)
        else:
            net = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        if in_channels != 3:
            old = net.conv1
            net.conv1 = nn.Conv2d(in_channels, old.out_channels, 7, 2, 3, bias=False)
            if pretrained:
                # Summed RGB filters see a grey image as the pretrained conv saw (x, x, x).
                with torch.no_grad():
                    net.conv1.weight.copy_(old.weight.sum(1, keepdim=True).repeat(1, in_channels, 1, 1) / in_channels)
        self.net = net
        if trainable is not None:
            names = [name for name, _ in net.named_children()]
            for name in trainable:
                if name not in names:
                    raise ConfigError(
                        f"model.trainable contains {name!r}, which is not a part of {arch}; use "
                        f"names from {names} (e.g. [layer4,fc]) or model.trainable=null to train "
                        f"everything.{close_matches(str(name), names)}"
                    )
            for name, child in net.named_children():
                child.requires_grad_(name in trainable)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.upsample(x))
