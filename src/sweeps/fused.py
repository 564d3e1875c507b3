"""K same-architecture models (different weights) as one module that trains them as K.

Replicates differ only in their seed, so on a big accelerator their small
kernels can run as one: horizontal fusion (HFTA, Wang et al., MLSys 2021).
Every layer becomes one layer over K replicates' channels, laid out
replicate-major (replicate k owns channels ``k*C .. (k+1)*C``):

* ``Conv2d(Cin, Cout, groups=g)`` -> ``Conv2d(K*Cin, K*Cout, groups=K*g)``: a
  group never reads another replicate's channels;
* ``BatchNorm2d(C)`` / ``BatchNorm1d(C)`` -> over ``K*C`` channels: its
  statistics (batch and running) are per channel, so these are exactly K
  independent BatchNorms;
* ``Linear`` -> a batched matmul over a ``[K, out, in]`` weight, the input
  ``[B, K*in]`` seen as ``[B, K, in]``;
* ``Dropout`` -> one mask per replicate, each from the replicate's own
  generator (see :class:`FusedDropout`);
* elementwise layers, pooling, ``Flatten`` and the residual adds of the
  containers' own ``forward`` work unchanged on ``[B, K*C, H, W]``.

Why not ``torch.func`` (``stack_module_state`` + ``vmap`` + ``functional_call``):
under ``vmap`` BatchNorm cannot update its running statistics in place (torch
asks for ``replace_all_batch_norm_modules_``, which stops tracking them), so
evaluation would no longer be that of K separate models; and the fused
modules here are plain cuDNN grouped convolutions and one bmm per linear,
with nothing traced per call. Exactness is what decides; it also keeps the
fused module an ``nn.Module`` whose ``state_dict`` has the unfused keys.

Every fused tensor (parameter, buffer, optimizer state) is replicate-major
along dim 0, so replicate k's part of any of them is ``t.view(K, *shape)[k]``
with ``shape`` the unfused tensor's; 0-dim tensors (``num_batches_tracked``,
an optimizer's ``step``) are shared, and equal in every replicate by
construction since the replicates step together.

What cannot be fused is refused with :class:`NotFusable` and a one-line
reason, never fused approximately: an unknown leaf layer, a layer with
parameters of its own in a container, models that differ in architecture
(resnet_cifar's option-A ``PadShortcut``, which pads the channel dim, has its
own fused form that pads each replicate's channels). A container's ``forward`` can
still do something the layer list cannot show (a channel mean, ``F.pad`` on
channels), so :func:`fuse` ends with a forward of the fused model against the
K originals on a random input, and refuses on any difference.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

# Leaf layers without state that act per element or per channel (never across channels).
PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Mish, nn.Sigmoid, nn.Tanh,
                nn.Hardswish, nn.Hardsigmoid, nn.Identity, nn.AvgPool2d, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
                nn.AdaptiveMaxPool2d)
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class NotFusable(Exception):
    """Why these models cannot train as one fused module (one line); the caller falls back."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class FusedLinear(nn.Module):
    """K ``Linear(in, out)`` as one ``bmm``; input and output replicate-major ``[B, K*features]``."""

    def __init__(self, k: int, in_features: int, out_features: int, bias: bool, device=None, dtype=None):
        super().__init__()
        self.k, self.in_features, self.out_features = k, in_features, out_features
        self.weight = nn.Parameter(torch.empty(k, out_features, in_features, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(k, out_features, device=device, dtype=dtype)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise RuntimeError(f"FusedLinear takes [B, K*in] inputs, not {list(x.shape)}")
        b = x.shape[0]
        xs = x.view(b, self.k, self.in_features).transpose(0, 1)  # [K, B, in]
        if self.bias is None:
            y = torch.bmm(xs, self.weight.transpose(1, 2))
        else:
            y = torch.baddbmm(self.bias.unsqueeze(1), xs, self.weight.transpose(1, 2))
        return y.transpose(0, 1).reshape(b, self.k * self.out_features)

    def extra_repr(self) -> str:
        return f"k={self.k}, in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class FusedPadShortcut(nn.Module):
    """He's option-A shortcut (subsample, then zero channels on both sides) for each replicate's own
    channels: padding ``[B, K*C, H, W]`` as a whole would put one replicate's zeros in the next one's
    channels, so the pad is applied to ``[B, K, C, H, W]``."""

    def __init__(self, extra_channels: int, stride: int, k: int):
        super().__init__()
        self.extra, self.stride, self.k = extra_channels, stride, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        b, kc, h, w = x.shape
        x = x.reshape(b, self.k, kc // self.k, h, w)
        x = torch.nn.functional.pad(x, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return x.reshape(b, kc + self.k * self.extra, h, w)


class FusedDropout(nn.Module):
    """Dropout with one mask per replicate, each drawn from that replicate's own generator.

    One mask over ``[B, K*F]`` from one stream would tie every replicate's dropout
    to the others' (and to K). Replicate k's mask is drawn exactly as the CPU
    ``F.dropout`` of an unfused model draws it from the global generator
    (``empty_like(x).bernoulli_(1 - p)``, then ``/ (1 - p)``), so on the CPU a
    replicate whose generator holds the global state an unfused run would have
    gets the same mask, bit for bit (tests/test_fused.py checks this). On CUDA
    ``nn.Dropout`` uses a fused kernel with its own use of the stream: the masks
    are independent per replicate and distributed alike, not the same bits.
    """

    def __init__(self, p: float, k: int):
        super().__init__()
        self.p, self.k = p, k
        self.generators: list[torch.Generator] | None = None  # set by the trainer; None: the global stream

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        parts = x.view(x.shape[0], self.k, -1)
        out = torch.empty_like(parts)
        for i in range(self.k):
            g = self.generators[i] if self.generators is not None else None
            noise = torch.empty_like(parts[:, i]).bernoulli_(1 - self.p, generator=g)
            if self.p == 1:
                noise.zero_()
            else:
                noise.div_(1 - self.p)
            out[:, i] = parts[:, i] * noise
        return out.view_as(x)

    def extra_repr(self) -> str:
        return f"p={self.p}, k={self.k}"


def _fuse_leaf(m: nn.Module, k: int, path: str) -> nn.Module:
    """The fused counterpart of one leaf layer (weights not copied yet)."""
    w = next(iter(m.parameters()), None)
    dd = {"device": w.device, "dtype": w.dtype} if w is not None else {}
    if type(m) is nn.Conv2d:
        if isinstance(m.padding, str) and m.padding != "valid" and m.padding != "same":
            raise NotFusable(f"{path}: Conv2d padding={m.padding!r} is not fusable")
        return nn.Conv2d(k * m.in_channels, k * m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                         k * m.groups, m.bias is not None, m.padding_mode, **dd)
    if type(m) in (nn.BatchNorm1d, nn.BatchNorm2d):
        return type(m)(k * m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats,
                       **({"device": m.running_mean.device} if m.running_mean is not None else dd))
    if type(m) is nn.Linear:
        return FusedLinear(k, m.in_features, m.out_features, m.bias is not None, **dd)
    if type(m) is nn.Dropout:
        return FusedDropout(m.p, k)
    if type(m) is nn.Flatten:
        if m.start_dim != 1 or m.end_dim != -1:
            raise NotFusable(f"{path}: Flatten({m.start_dim}, {m.end_dim}) would not keep each replicate's "
                             "features together; only Flatten(1, -1) fuses")
        return copy.deepcopy(m)
    if isinstance(m, PASS_THROUGH + CONTAINERS) and not list(m.parameters()) and not list(m.buffers()):
        return copy.deepcopy(m)
    from sweeps.models.resnet_cifar import PadShortcut

    if type(m) is PadShortcut:
        return FusedPadShortcut(m.extra, m.stride, k)
    raise NotFusable(f"{path}: {type(m).__module__}.{type(m).__name__} is not a layer that fuses")


def _fuse_tree(m: nn.Module, k: int, path: str) -> nn.Module:
    children = list(m.named_children())
    if not children:
        return _fuse_leaf(m, k, path or type(m).__name__)
    own = [n for n, _ in m.named_parameters(recurse=False)] + [n for n, _ in m.named_buffers(recurse=False)]
    if own:
        raise NotFusable(f"{path or type(m).__name__}: {type(m).__name__} holds {', '.join(own)} itself, "
                         "outside any layer that fuses")
    fused = copy.copy(m)  # the container's own forward and attributes; its children replaced below
    fused._modules = {}
    for name, child in children:
        fused._modules[name] = _fuse_tree(child, k, f"{path}.{name}" if path else name)
    fused._parameters, fused._buffers = {}, {}
    return fused


def _describe(model: nn.Module) -> list[tuple[str, str]]:
    return [(name, repr(m) if not list(m.children()) else type(m).__qualname__) for name, m in model.named_modules()]


class FusedModel(nn.Module):
    """K models as one: :meth:`forward` takes replicate-major channels and gives ``[K, B, classes]``."""

    def __init__(self, body: nn.Module, k: int, shapes: dict[str, torch.Size]):
        super().__init__()
        self.body, self.k = body, k
        self._shapes = shapes  # each unfused state-dict entry's shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return y.view(y.shape[0], self.k, -1).transpose(0, 1)

    @staticmethod
    def stack(batches: Sequence[torch.Tensor]) -> torch.Tensor:
        """K batches ``[B, C, H, W]`` as one fused input ``[B, K*C, H, W]``."""
        return torch.cat(list(batches), dim=1)

    def dropouts(self) -> list[FusedDropout]:
        return [m for m in self.modules() if isinstance(m, FusedDropout)]

    def set_dropout_generators(self, generators: Sequence[torch.Generator] | None) -> None:
        for m in self.dropouts():
            m.generators = list(generators) if generators is not None else None

    # -- replicate k's part of any fused tensor --------------------------------------------------
    def split(self, name: str, tensor: torch.Tensor, k: int) -> torch.Tensor:
        shape = self._shapes[name]
        if tensor.dim() == 0:
            return tensor
        return tensor.view(self.k, *shape)[k]

    def replica_state_dict(self, k: int) -> dict[str, torch.Tensor]:
        """Replicate k's weights and buffers as the unfused model's ``state_dict`` (cloned)."""
        sd = self.body.state_dict()
        return {name: self.split(name, t, k).clone() for name, t in sd.items()}

    def load_replica_state_dict(self, k: int, sd: dict[str, torch.Tensor]) -> None:
        """Replicate k's part from an unfused ``state_dict`` (every key, the unfused shapes)."""
        if set(sd) != set(self._shapes):
            missing, extra = set(self._shapes) - set(sd), set(sd) - set(self._shapes)
            raise KeyError(f"state dict does not match the model: missing {sorted(missing)}, unexpected {sorted(extra)}")
        own = self.body.state_dict(keep_vars=True)
        with torch.no_grad():
            for name, value in sd.items():
                t = own[name]
                if tuple(value.shape) != tuple(self._shapes[name]):
                    raise ValueError(f"{name}: shape {list(value.shape)}, the model has {list(self._shapes[name])}")
                if t.dim() == 0:
                    if not torch.equal(t, value.to(t)):
                        raise ValueError(f"{name} is shared by the fused replicates ({t.item()}), not {value.item()}")
                    continue
                t.view(self.k, *self._shapes[name])[k].copy_(value)

    def param_names(self) -> list[str]:
        return [n for n, _ in self.body.named_parameters()]

    # -- optimizer state -------------------------------------------------------------------------
    def replica_optimizer_state_dict(self, optimizer: torch.optim.Optimizer, k: int) -> dict:
        """Replicate k's part of ``optimizer`` (built over this model's ``parameters()``), loadable into
        the same optimizer built over the unfused model."""
        names = self.param_names()
        sd = optimizer.state_dict()
        state = {i: {key: (self.split(names[i], v, k).clone() if torch.is_tensor(v) and v.dim() > 0 else
                           (v.clone() if torch.is_tensor(v) else copy.deepcopy(v)))
                     for key, v in s.items()} for i, s in sd["state"].items()}
        return {"state": state, "param_groups": copy.deepcopy(sd["param_groups"])}

    def load_optimizer_state_dicts(self, optimizer: torch.optim.Optimizer, states: Sequence[dict]) -> None:
        """The fused optimizer's state from K unfused ones (a resumed replicate each)."""
        names = self.param_names()
        if len(states) != self.k:
            raise ValueError(f"{len(states)} optimizer states for {self.k} replicates")
        keys = [set(s["state"]) for s in states]
        if any(ks != keys[0] for ks in keys):
            raise NotFusable("the replicates' optimizer states cover different parameters")
        groups = [[{k: v for k, v in g.items() if k != "params"} for g in s["param_groups"]] for s in states]
        if any(g != groups[0] for g in groups):
            raise NotFusable("the replicates' optimizers differ in their settings (lr, momentum, ...)")
        fused_state = {}
        for i in keys[0]:
            entry = {}
            for key, v in states[0]["state"][i].items():
                vs = [s["state"][i][key] for s in states]
                if torch.is_tensor(v) and v.dim() > 0:
                    entry[key] = torch.stack(vs).reshape(self.body.get_parameter(names[i]).shape)
                else:
                    if any((not torch.equal(torch.as_tensor(x), torch.as_tensor(v))) for x in vs):
                        raise NotFusable(f"the replicates' optimizers are at different steps ({key} of {names[i]})")
                    entry[key] = v
            fused_state[i] = entry
        sd = optimizer.state_dict()
        optimizer.load_state_dict({"state": fused_state, "param_groups": [
            {**g, "params": sd["param_groups"][j]["params"]} for j, g in enumerate(states[0]["param_groups"])]})

    # -- per-replicate gradient clipping ----------------------------------------------------------
    @torch.no_grad()
    def clip_grad_norm_(self, max_norm: float) -> torch.Tensor:
        """Each replicate's own ``clip_grad_norm_(max_norm)`` (2-norm); returns the K norms.

        One global clip would scale every replicate by the largest joint norm: one
        replicate's spike would shrink the others' steps.
        """
        grads = [p.grad.view(self.k, -1) for p in self.parameters() if p.grad is not None]
        if not grads:
            return torch.zeros(self.k)
        norms = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g, 2, dim=1) for g in grads], 1),
                                         2, dim=1)  # [K]
        coef = (max_norm / (norms + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.unsqueeze(1).to(g.dtype))
        return norms


def fuse(models: Sequence[nn.Module], input_shape: Sequence[int] = (3, 32, 32), check: bool = True) -> FusedModel:
    """One :class:`FusedModel` training ``models`` (same architecture, any weights) as themselves.

    ``input_shape`` (C, H, W) is that of one replicate's images, for the closing
    self-check: a forward (eval mode, no grad, a private generator) of the
    fused model against each original, refused with :class:`NotFusable` on any
    difference beyond float reordering.
    """
    models = list(models)
    if not models:
        raise NotFusable("no models to fuse")
    k = len(models)
    first = _describe(models[0])
    for i, m in enumerate(models[1:], 1):
        other = _describe(m)
        if other != first:
            where = next((a[0] or "<root>" for a, b in zip(first, other) if a != b), "the end")
            raise NotFusable(f"replicate {i} differs in architecture from replicate 0 (at {where})")
    body = _fuse_tree(models[0], k, "")
    sds = [m.state_dict() for m in models]
    shapes = {name: t.shape for name, t in sds[0].items()}
    own = body.state_dict(keep_vars=True)
    if set(own) != set(shapes):
        raise NotFusable("the fused model's state does not match the model's (a layer keeps state it does not register)")
    with torch.no_grad():
        for name, t in own.items():
            if t.dim() == 0:
                if any(not torch.equal(sd[name], sds[0][name]) for sd in sds):
                    raise NotFusable(f"{name} differs between the replicates; they must be at the same step")
                t.copy_(sds[0][name])
            else:
                t.copy_(torch.stack([sd[name] for sd in sds]).reshape(t.shape))
    fused = FusedModel(body, k, shapes)
    if [n for n, _ in models[0].named_parameters()] != fused.param_names():
        raise NotFusable("the fused model's parameters are not in the model's order")
    if check:
        _self_check(fused, models, input_shape)
    return fused


@torch.no_grad()
def _self_check(fused: FusedModel, models: list[nn.Module], input_shape: Sequence[int]) -> None:
    p = next(iter(fused.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    xs = [torch.randn(2, *input_shape, generator=gen).to(device) for _ in models]
    modes = [m.training for m in models]
    fused_mode = fused.training
    try:
        for m in models:
            m.eval()
        fused.eval()
        try:
            got = fused(FusedModel.stack(xs))
        except Exception as e:  # a shape that only fits one replicate: channels padded, split or mixed
            raise NotFusable(f"the fused model fails on a fused batch ({type(e).__name__}: {str(e).splitlines()[0]})") from None
        for i, (m, x) in enumerate(zip(models, xs)):
            want = m(x)
            if got[i].shape != want.shape:
                raise NotFusable(f"the fused model gives replicate {i} outputs of shape {list(got[i].shape)}, "
                                 f"the model {list(want.shape)}")
            scale = 1 + want.abs().max().item()
            diff = (got[i].float() - want.float()).abs().max().item()
            tol = 2e-2 if device.type == "cuda" else 1e-4  # TF32 convolutions on CUDA
            if not diff <= tol * scale:
                raise NotFusable(f"the fused model's replicate {i} differs from the model by {diff:.3g} "
                                 "(its forward mixes channels across replicates: a channel pad, split or mean)")
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
        fused.train(fused_mode)
