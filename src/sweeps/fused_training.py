"""K replicates' :class:`~sweeps.engine.Training` run as one fused model, an epoch per call.

Built from the K replicates' own ``Training`` objects (each made as an unfused
run makes it, resumed from its ``last.pt`` or not), so that whatever reads a
replicate afterwards (its ``result``, ``best_state``, ``done``, its
``last.pt``, its test with ``model``) reads it as if it had trained alone:
:meth:`FusedTraining.epoch` writes each replicate's epoch back into its
``Training``, and each ``last.pt`` is written in the unfused format by the
replicate's own ``_checkpoint``, its model and optimizer first filled from the
fused ones. A fused run can so resume unfused, and the other way round.

Exact per replicate because nothing couples them: the loss is the sum of each
replicate's mean loss (so each gradient is its own); the optimizers allowed
(SGD, Adam, AdamW, ...) act element by element, weight decay included, on
replicate-major tensors; a schedule that counts steps or epochs is the same
for all; clipping by norm is per replicate. Anything else that would couple
them is refused with :class:`~sweeps.fused.NotFusable`: ``ReduceLROnPlateau``
(each replicate has its own plateau), fp16's ``GradScaler`` (one overflow
would skip every replicate's step), an optimizer not known to be elementwise.

Randomness stays per replicate: each keeps its own pipeline (its data order
and augmentation draws) and its own CPU stream (``rng_states``, the global
state each replicate would have had alone, as ``sweeps.lockstep`` keeps it).
That stream is the global one while its batch is drawn, and its dropout masks
come from it: on the CPU a replicate draws exactly the numbers it would draw
unfused. A replicate that has finished (early stopping) still rides along in
the fused pass, fed another replicate's batch, but its loss is left out and
its ``Training`` no longer changes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from sweeps.data.pipeline import use_channels_last
from sweeps.engine import EpochMetrics, Training, _autocast, build_optimizer, build_scheduler, improves
from sweeps.errors import Diverged
from sweeps.fused import FusedModel, NotFusable, fuse
from sweeps_optuna.contract import Interrupted

ELEMENTWISE = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop, torch.optim.Adagrad,
               torch.optim.Adamax, torch.optim.NAdam, torch.optim.RAdam)


def _refuse(precision: str, scheduler: type | None, optimizer: type) -> None:
    if precision == "fp16":
        raise NotFusable("trainer.precision=fp16: one GradScaler over the fused model would skip every "
                         "replicate's step when one overflows; bf16 or fp32 fuse")
    if scheduler is not None and issubclass(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise NotFusable("ReduceLROnPlateau steps on each replicate's own validation metric; "
                         "one fused optimizer has one learning rate")
    if optimizer not in ELEMENTWISE:
        raise NotFusable(f"optimizer {optimizer.__name__} is not known to act element by element "
                         f"(fused: {', '.join(c.__name__ for c in ELEMENTWISE)})")


def check_config(cfg: DictConfig) -> None:
    """:func:`check_fusable`'s refusals that the config alone decides, before anything is built."""
    from hydra.utils import get_class

    target = OmegaConf.select(cfg, "schedule.scheduler._target_")
    _refuse(str(cfg.trainer.precision), get_class(target) if target else None, get_class(cfg.optim._target_))


def check_fusable(cfg: DictConfig, members: Sequence[Training]) -> None:
    """Raise :class:`NotFusable` for what would couple replicates (before any model is fused)."""
    for m in members:
        _refuse("fp16" if m.scaler.is_enabled() else str(cfg.trainer.precision),
                type(m.scheduler) if m.scheduler is not None else None, type(m.optimizer))
    trainers = [OmegaConf.to_container(m.trainer, resolve=True) for m in members]
    if any(tr != trainers[0] for tr in trainers):
        raise NotFusable("the replicates' trainer settings differ")
    live = {m.result.epochs_run for m in members if not m.done}
    if len(live) > 1:
        raise NotFusable(f"the unfinished replicates are at different epochs ({sorted(live)})")
    steps = {m.steps_per_epoch for m in members}
    if len(steps) > 1:
        raise NotFusable(f"the replicates' epochs have different numbers of steps ({sorted(steps)})")


class FusedTraining:
    """K replicates trained as one :class:`~sweeps.fused.FusedModel`; see the module docstring.

    ``members``: each replicate's ``Training`` (same config but the seed);
    ``rng_states``: each replicate's random state as ``sweeps.lockstep`` keeps it
    (``{"cpu": ByteTensor, "cuda": ByteTensor}``, cuda optional); ``labels``
    prefix a replicate's errors (e.g. ``"seed 3: "``).
    """

    def __init__(self, cfg: DictConfig, members: Sequence[Training], rng_states: Sequence[dict[str, Any]],
                 labels: Sequence[str] | None = None, input_shape: Sequence[int] | None = None):
        self.members, self.k = list(members), len(members)
        if len(rng_states) != self.k:
            raise ValueError(f"{len(rng_states)} rng states for {self.k} replicates")
        check_fusable(cfg, self.members)
        self.trainer, first = cfg.trainer, self.members[0]
        self.device, self.amp_dtype, self.predict = first.device, first.amp_dtype, first.predict
        self.steps_per_epoch, self.per_step, self.check_every = first.steps_per_epoch, first.per_step, first.check_every
        self.labels = list(labels) if labels is not None else [f"replicate {i}: " for i in range(self.k)]
        if input_shape is None:
            input_shape = (int(cfg.dataset.get("channels", 3)), int(cfg.dataset.get("image_size", 32)),
                           int(cfg.dataset.get("image_size", 32)))
        self.model: FusedModel = fuse([m.model for m in self.members], input_shape)
        if use_channels_last(cfg, self.device):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(cfg, self.model)
        states = [m.optimizer.state_dict() for m in self.members]
        if any(s["state"] for s in states):  # resumed replicates
            self.model.load_optimizer_state_dicts(self.optimizer, states)
        self.scheduler = build_scheduler(cfg, self.optimizer, self.steps_per_epoch)
        if self.scheduler is not None:
            self.scheduler.load_state_dict(first.scheduler.state_dict())
            for g, lr in zip(self.optimizer.param_groups, [g["lr"] for g in first.optimizer.param_groups]):
                g["lr"] = lr
        self.cpu_gens = [torch.Generator().set_state(s["cpu"].cpu()) for s in rng_states]
        if self.device.type == "cuda":
            self.cuda_gens = []
            for i, s in enumerate(rng_states):
                g = torch.Generator(device=self.device)
                if s.get("cuda") is not None:
                    g.set_state(s["cuda"].cpu())
                else:
                    g.manual_seed(int(torch.randint(2**62, (1,), generator=torch.Generator().set_state(s["cpu"].cpu()))) + i)
                self.cuda_gens.append(g)
            self.model.set_dropout_generators(self.cuda_gens)
        else:
            self.cuda_gens = None
            self.model.set_dropout_generators(self.cpu_gens)
        if bool(self.trainer.get("compile", False)):
            self.model.compile()
        self.on_step = None  # called with each step's K losses (detached), for tests and benchmarks

    @property
    def done(self) -> bool:
        return all(m.done for m in self.members)

    def rng_states(self) -> list[dict[str, torch.Tensor]]:
        """Each replicate's random state now, in ``sweeps.lockstep``'s form (for its test, after training)."""
        out = [{"cpu": g.get_state()} for g in self.cpu_gens]
        if self.cuda_gens is not None:
            for o, g in zip(out, self.cuda_gens):
                o["cuda"] = g.get_state()
        return out

    def sync(self, i: int) -> None:
        """Replicate i's ``Training`` (model, optimizer, scheduler) filled from the fused ones."""
        m = self.members[i]
        m.model.load_state_dict(self.model.replica_state_dict(i))
        m.optimizer.load_state_dict(self.model.replica_optimizer_state_dict(self.optimizer, i))
        if m.scheduler is not None:
            m.scheduler.load_state_dict(self.scheduler.state_dict())

    def run(self) -> list[tuple[Any, dict]]:
        while not self.done:
            self.epoch()
        return [(m.result, m.best_state) for m in self.members]

    def _batches(self, iters: dict[int, Any], active: list[int]):
        """One step's batch of every replicate, each drawn with its own stream as the global one.

        At the end of an epoch every iterator is asked once more, as an unfused loop asks its own:
        a capped epoch (``trainer.limit_train_batches``) draws one batch beyond the cap before it
        stops, and that draw moves the loader's generator, so skipping it for some replicates
        would shift their next epoch's data and augmentation."""
        saved = torch.get_rng_state()
        out, ended = {}, []
        try:
            for i in active:
                torch.set_rng_state(self.cpu_gens[i].get_state())
                try:
                    out[i] = next(iters[i])
                except StopIteration:
                    ended.append(i)
                finally:
                    self.cpu_gens[i].set_state(torch.get_rng_state())
        finally:
            torch.set_rng_state(saved)
        if ended:
            if len(ended) != len(active):
                raise RuntimeError("the replicates' epochs ended after different numbers of batches")
            return None
        return out

    def _stack(self, batch: dict[int, tuple], active: list[int]):
        dev = self.device
        xs = {i: batch[i][0].to(dev, non_blocking=True) for i in active}
        ys = {i: batch[i][1].to(dev, non_blocking=True) for i in active}
        sizes = {len(y) for y in ys.values()}
        if len(sizes) > 1:
            raise RuntimeError(f"the replicates' batches differ in size ({sorted(sizes)}) at the same step")
        a = active[0]
        x = FusedModel.stack([xs.get(i, xs[a]) for i in range(self.k)])
        y = torch.stack([ys.get(i, ys[a]) for i in range(self.k)])  # [K, B]
        return x, y

    def epoch(self) -> list[EpochMetrics | None]:
        """One epoch of every unfinished replicate; its metrics (None for one finished before)."""
        t, model, k = self.trainer, self.model, self.k
        active = [i for i, m in enumerate(self.members) if not m.done]
        if not active:
            return [None] * k
        idx = torch.tensor(active, device=self.device)
        epoch = self.members[active[0]].result.epochs_run
        model.train()
        start = time.perf_counter()
        loss_sum = torch.zeros(k, device=self.device)
        correct = torch.zeros(k, device=self.device, dtype=torch.int64)
        seen = 0
        iters = {i: iter(self.members[i].train_batches(epoch)) for i in active}
        smoothing = float(t.label_smoothing)
        bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{t.epochs} (fused x{len(active)})",
                   disable=None if t.progress else True, leave=False, dynamic_ncols=True)
        step = 0
        while (batch := self._batches(iters, active)) is not None:
            Interrupted.check()  # a Ctrl-C whose exception a finalizer swallowed
            x, y = self._stack(batch, active)
            b = y.shape[1]
            with _autocast(self.device, self.amp_dtype):
                logits = model(x)  # [K, B, classes]
                losses = F.cross_entropy(logits.float().reshape(k * b, -1), y.reshape(-1), reduction="none",
                                         label_smoothing=smoothing).view(k, b).mean(1)
            if step % self.check_every == 0 and not torch.isfinite(losses[idx]).all():
                i = next(i for i in active if not math.isfinite(losses[i].item()))
                raise Diverged(f"{self.labels[i]}diverged at epoch {epoch + 1} step {step + 1}: "
                               f"the training loss is {losses[i].item()}")
            self.optimizer.zero_grad(set_to_none=True)
            losses[idx].sum().backward()
            if t.grad_clip:
                model.clip_grad_norm_(float(t.grad_clip))
            self.optimizer.step()
            if self.scheduler is not None and self.per_step:
                self.scheduler.step()
            if self.on_step is not None:
                self.on_step(losses.detach())
            loss_sum += losses.detach() * b
            correct += (logits.argmax(-1) == y).sum(1)
            seen += b
            step += 1
            bar.update()
        bar.close()
        train_loss = (loss_sum / max(seen, 1)).tolist()
        train_acc = (correct.double() / max(seen, 1)).tolist()
        for i in active:
            if not math.isfinite(train_loss[i]):
                raise Diverged(f"{self.labels[i]}diverged at epoch {epoch + 1}: the mean training loss is {train_loss[i]}")
        val = self._evaluate(active)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scheduler is not None and not self.per_step:
            self.scheduler.step()
        elapsed = time.perf_counter() - start
        out: list[EpochMetrics | None] = [None] * k
        for i in active:
            out[i] = self._end_epoch(i, EpochMetrics(epoch + 1, train_loss[i], train_acc[i], val[i][0], val[i][1],
                                                     lr, elapsed, seen / elapsed))
        return out

    def _end_epoch(self, i: int, metrics: EpochMetrics) -> EpochMetrics:
        """As ``Training.epoch`` ends, for replicate i: the best, patience, ``last.pt``, its callback."""
        m, t = self.members[i], self.trainer
        result = m.result
        result.history.append(metrics)
        if improves(str(t.get("monitor", "val_acc")), metrics.val_acc, metrics.val_loss, result):
            result.best_epoch, result.best_val_acc, result.best_val_loss = metrics.epoch, metrics.val_acc, metrics.val_loss
            result.train_acc_at_best = metrics.train_acc
            m.best_state = self.model.replica_state_dict(i)
            m.since_best = 0
        else:
            m.since_best += 1
        result.stopped_early = m._patience_spent() and result.epochs_run < int(t.epochs)
        m.done = result.epochs_run >= int(t.epochs) or m._patience_spent()
        if m.last_path is not None or m.done:
            self.sync(i)
        if m.last_path is not None:
            self._checkpoint(i)
        if m.on_epoch_end is not None:
            m.on_epoch_end(metrics, result)
        return metrics

    def _checkpoint(self, i: int) -> None:
        """Replicate i's ``last.pt`` by its own ``Training``, with its own stream as the global one."""
        saved = torch.get_rng_state()
        saved_cuda = torch.cuda.get_rng_state(self.device) if self.cuda_gens is not None else None
        try:
            torch.set_rng_state(self.cpu_gens[i].get_state())
            if self.cuda_gens is not None:
                torch.cuda.set_rng_state(self.cuda_gens[i].get_state(), self.device)
            self.members[i]._checkpoint()
        finally:
            torch.set_rng_state(saved)
            if saved_cuda is not None:
                torch.cuda.set_rng_state(saved_cuda, self.device)

    @torch.no_grad()
    def _evaluate(self, active: list[int]) -> dict[int, tuple[float, float]]:
        """(val loss, val acc) of each active replicate on its own validation batches."""
        self.model.eval()
        k = self.k
        iters = {i: iter(self.members[i].val_batches()) for i in active}
        loss_sum = torch.zeros(k, device=self.device)
        correct = torch.zeros(k, device=self.device, dtype=torch.int64)
        n = 0
        while (batch := self._batches(iters, active)) is not None:
            x, y = self._stack(batch, active)
            with _autocast(self.device, self.amp_dtype):
                logits = self.predict(self.model, x)
            loss_sum += F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1),
                                        reduction="none").view(k, -1).sum(1)
            correct += (logits.argmax(-1) == y).sum(1)
            n += y.shape[1]
        if n == 0:
            return {i: (float("nan"), float("nan")) for i in active}
        losses, accs = (loss_sum / n).tolist(), (correct.double() / n).tolist()
        return {i: (losses[i], accs[i]) for i in active}
