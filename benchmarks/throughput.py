"""Training throughput: the device pipeline against a seed-style reference.

    python benchmarks/throughput.py                      # auto device, fake CIFAR-shaped data
    python benchmarks/throughput.py --device cuda --steps 100 --batch-sizes 128 512 1024
    python benchmarks/throughput.py --dataset cifar10 --data-root /path/with/cifar-10-batches-py/..

Trains ``model=resnet18_trunc`` (4,779,530 parameters on CIFAR-10) for a fixed
number of steps, twice per batch size in one process:

* ours: ``DeviceLoader`` + ``BatchAugment`` (split on the device, batched
  augmentation), bf16 autocast and channels_last on CUDA (fp32 on the CPU);
* reference: the seeds' recipe, torchvision (v1) PIL transforms per sample in
  a ``DataLoader`` with the machine's CPU count as workers, fp32, NCHW.

For each it prints images/s, seconds per 50k-image epoch, peak GPU memory,
achieved TFLOP/s (FLOPs of one forward+backward counted by
``torch.utils.flop_counter.FlopCounterMode``) and MFU against the device's
dense bf16 peak, then the speed ratio, and finally the per-trial overhead of a
mini sweep run in one process (end of one trial to the end of the next one's
first step, with the in-process dataset cache). Machine-readable lines start
with ``result``, ``ratio`` and ``sweep``.

``--fused`` times replicates instead (issue 19): K seeds of one config at one
batch size (128 by default), K in ``--replicates`` (1 2 4 8), three ways in one
invocation, each on the device pipeline with every replicate's own loader:

* fused: the K models as one ``sweeps.fused`` model, one step for all K;
* sequential: K single runs one after another in this process;
* concurrent: K processes at once on the same device (on the CPU each gets
  its share of this process's threads, as the cores are shared).

Images/s are summed over replicates (K x steps x batch / wall time); peak GPU
memory is the fused process's, the largest single run's, and the sum over the
concurrent processes. Lines start with ``fused``; ``fused_ratio`` compares.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from sweeps.data.batch_augment import BatchAugment
from sweeps.data.datasets import load_splits
from sweeps.data.device_loader import DeviceLoader
from sweeps.engine import build_optimizer
from sweeps.fused import FusedModel, NotFusable, fuse
from sweeps.models import build_model, count_parameters
from sweeps.paths import CONF_DIR

EPOCH_IMAGES = 50_000
# Dense (no 2:4 sparsity) bf16 tensor-core peaks, TFLOP/s, by a substring of
# torch.cuda.get_device_name(); the first key found in the name wins, so the more
# specific keys come first ("H100 PCIe" before "H100", "A100" before "A10", "L40S"
# before "L4"). Sources: NVIDIA's datasheets (H100 and H200 Tensor Core GPU,
# A100, L4, L40, L40S, A10, DGX/HGX B200), whose bf16 figures are quoted with
# sparsity and halved here. benchmarks/gpu_check.py reads this table (by parsing
# this file: it must stay a literal dict).
PEAK_TFLOPS = {
    "GH200": 989.0,      # Grace Hopper: the H100 SXM's tensor cores
    "H200 NVL": 835.0,   # 1,671 sparse
    "H200": 989.0,       # H200 SXM, 1,979 sparse
    "H100 NVL": 835.0,   # 1,671 sparse
    "H100 PCIe": 756.0,  # 1,513 sparse
    "H100": 989.0,       # H100 SXM ("NVIDIA H100 80GB HBM3"), 1,979 sparse
    "B200": 2250.0,      # HGX B200, 4.5 PFLOP/s sparse per GPU
    "A100": 312.0,       # SXM and PCIe, 624 sparse
    "L40S": 362.0,       # 733 sparse
    "L40": 181.0,        # 362 sparse
    "L4": 121.0,         # 242 sparse
    "A10": 125.0,        # A10 (not A10G), 250 sparse
}


def compose(args):
    from hydra import compose as hydra_compose, initialize_config_dir

    overrides = [f"dataset={args.dataset}", "model=resnet18_trunc", f"augment={args.augment}",
                 f"paths.root={os.getcwd()}", f"dataset.root={Path(args.data_root).resolve()}",
                 "tracking.enabled=false", *args.override]
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def device_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def flops_per_image(cfg) -> float:
    """FLOPs of one forward + backward per image (linear in the batch)."""
    model = build_model(cfg).train()
    c, s = int(cfg.dataset.channels), int(cfg.dataset.image_size)
    x, y = torch.randn(4, c, s, s), torch.randint(0, int(cfg.dataset.num_classes), (4,))
    with FlopCounterMode(display=False) as counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / 4


class SeedStyle(Dataset):
    """uint8 tensors -> PIL images -> torchvision v1 transforms, one sample at a time."""

    def __init__(self, split, cfg):
        from PIL import Image
        from torchvision import transforms as T

        from sweeps.data.augment import normalization

        self.Image, self.images, self.labels = Image, split.images.permute(0, 2, 3, 1).numpy(), split.labels
        aug, ds = cfg.augment, cfg.dataset
        ops = []
        if aug.get("crop"):
            ops.append(T.RandomCrop(int(ds.image_size), padding=int(aug.crop.padding),
                                    padding_mode=str(aug.crop.get("padding_mode", "constant"))))
        if aug.get("flip"):
            ops.append(T.RandomHorizontalFlip(float(aug.flip)))
        if aug.get("rotate"):
            ops.append(T.RandomRotation(float(aug.rotate)))
        ops.append(T.ToTensor())
        norm = normalization(aug, ds)
        if norm:
            ops.append(T.Normalize(*norm))
        if aug.get("cutout"):
            frac = (int(aug.cutout.size) / int(ds.image_size)) ** 2
            ops.append(T.RandomErasing(p=float(aug.cutout.get("p", 1.0)), scale=(frac, frac), ratio=(1.0, 1.0)))
        self.tf = T.Compose(ops)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.tf(self.Image.fromarray(self.images[i])), self.labels[i]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, optimizer, device, amp_dtype):
    criterion = torch.nn.CrossEntropyLoss()

    def step(x, y):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss = criterion(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    return step


def timed_run(cfg, splits, device, batch_size, steps, warmup, ours: bool, workers: int, compile_model: bool,
              compile_backend: str = "inductor"):
    torch.manual_seed(0)
    model = build_model(cfg).to(device).train()
    cuda = device.type == "cuda"
    if ours and cuda:
        model = model.to(memory_format=torch.channels_last)
    if ours and compile_model:
        model.compile(backend=compile_backend)
    optimizer = build_optimizer(cfg, model)
    if ours:
        loader = DeviceLoader(splits.train, BatchAugment(cfg.augment, cfg.dataset), batch_size, device, 0,
                              channels_last=cuda)
        amp = torch.bfloat16 if cuda else None
    else:
        loader = DataLoader(SeedStyle(splits.train, cfg), batch_size=batch_size, shuffle=True, drop_last=True,
                            num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
        amp = None
    step = make_step(model, optimizer, device, amp)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))  # epochs back to back
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step(*next(batches))
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step(*next(batches))
    sync(device)
    elapsed = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError(f"the benchmark's training loss is {loss.item()}")
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    del batches, loader, model, optimizer
    gc.collect()
    return steps * batch_size / elapsed, peak_mem


def data_only(cfg, splits, device, batch_size, n_batches, ours: bool, workers: int):
    """Images/s of the input pipeline alone (augmented batches on the device, no model)."""
    cuda = device.type == "cuda"
    if ours:
        loader = DeviceLoader(splits.train, BatchAugment(cfg.augment, cfg.dataset), batch_size, device, 0,
                              channels_last=cuda)
    else:
        loader = DataLoader(SeedStyle(splits.train, cfg), batch_size=batch_size, shuffle=True, drop_last=True,
                            num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0)
    batches = itertools.chain.from_iterable(itertools.repeat(loader))
    x, _ = next(batches)  # worker start-up and first-batch costs excluded
    sync(device)
    start = time.perf_counter()
    for _ in range(n_batches):
        x, y = next(batches)
        x = x.to(device, non_blocking=True)
    sync(device)
    elapsed = time.perf_counter() - start
    del batches, loader
    return n_batches * batch_size / elapsed


def mini_sweep(cfg, device, trials: int, steps: int, batch_size: int):
    """Trials back to back in one process, as Hydra's basic launcher runs them.

    Overhead of a trial = end of the previous trial -> its first step starts
    (data from the in-process cache, model build, device copy, optimizer, first
    augmented batch); the first step itself (cuDNN autotuning, compilation) is
    reported apart."""
    overheads, data_times, first_steps, prev_end = [], [], [], None
    for trial in range(trials):
        start = time.perf_counter()
        torch.manual_seed(trial)
        splits = load_splits(cfg.dataset)
        model = build_model(cfg).to(device).train()
        if device.type == "cuda":
            model = model.to(memory_format=torch.channels_last)
        loader = DeviceLoader(splits.train, BatchAugment(cfg.augment, cfg.dataset), batch_size, device, trial,
                              channels_last=device.type == "cuda")
        data_times.append(time.perf_counter() - start)
        step = make_step(model, build_optimizer(cfg, model), device, torch.bfloat16 if device.type == "cuda" else None)
        for i, (x, y) in enumerate(loader):
            if i == 0:
                sync(device)
                first = time.perf_counter()
                overheads.append(first - (prev_end if prev_end is not None else start))
            step(x, y)
            if i == 0:
                sync(device)
                first_steps.append(time.perf_counter() - first)
            if i + 1 >= steps:
                break
        sync(device)
        prev_end = time.perf_counter()
        del model, loader, splits
    return overheads, data_times, first_steps


def replicate_batches(cfg, splits, device, batch_size: int, k: int):
    """Each replicate's own endless stream of augmented batches (its seed, its generator)."""
    cuda = device.type == "cuda"
    return [itertools.chain.from_iterable(itertools.repeat(
        DeviceLoader(splits.train, BatchAugment(cfg.augment, cfg.dataset), batch_size, device, seed,
                     channels_last=cuda))) for seed in range(k)]


def fused_run(cfg, splits, device, batch_size: int, k: int, steps: int, warmup: int, compile_model: bool):
    """Images/s (summed over the K replicates) and peak memory of K replicates fused into one model."""
    cuda = device.type == "cuda"
    models = []
    for seed in range(k):
        torch.manual_seed(seed)
        models.append(build_model(cfg).to(device).train())
    c, size = int(cfg.dataset.channels), int(cfg.dataset.image_size)
    model = fuse(models, (c, size, size))
    del models
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    if compile_model:
        model.compile()
    optimizer = build_optimizer(cfg, model)
    amp = torch.bfloat16 if cuda else None
    streams = replicate_batches(cfg, splits, device, batch_size, k)

    def step():
        xs, ys = zip(*(next(s) for s in streams))
        x, y = FusedModel.stack(xs), torch.stack(ys)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            logits = model(x)
            # each replicate's own mean loss, summed: each gradient is its replicate's alone
            loss = F.cross_entropy(logits.float().reshape(k * len(ys[0]), -1), y.reshape(-1),
                                   reduction="none").view(k, -1).mean(1).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    elapsed = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise RuntimeError(f"the fused benchmark's training loss is {loss.item()}")
    peak_mem = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return steps * k * batch_size / elapsed, peak_mem  # its models and loaders go with this frame


def _concurrent_worker(args, device_type: str, batch_size: int, steps: int, warmup: int, threads: int,
                       barrier, results) -> None:
    """One of K processes: warm up, wait for the others, then time its steps (wall-clock stamps)."""
    try:
        torch.set_num_threads(threads)
        device = torch.device(device_type)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        cfg = compose(args)
        splits = load_splits(cfg.dataset)
        torch.manual_seed(0)
        model = build_model(cfg).to(device).train()
        cuda = device.type == "cuda"
        if cuda:
            model = model.to(memory_format=torch.channels_last)
        step = make_step(model, build_optimizer(cfg, model), device, torch.bfloat16 if cuda else None)
        batches = replicate_batches(cfg, splits, device, batch_size, 1)[0]
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(warmup):
            step(*next(batches))
        sync(device)
        barrier.wait()
        start = time.time()
        for _ in range(steps):
            step(*next(batches))
        sync(device)
        end = time.time()
        results.put((start, end, torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None, None))
    except BaseException as e:  # the parent reports it; a broken barrier frees the others
        barrier.abort()
        results.put((None, None, None, f"{type(e).__name__}: {e}"))


def concurrent_run(args, device, batch_size: int, k: int, steps: int, warmup: int):
    """K single runs as K processes at once: images/s over the span from the first start to the last end."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # CUDA cannot be used in a forked child
    barrier, results = ctx.Barrier(k), ctx.Queue()
    threads = max(1, torch.get_num_threads() // k)
    procs = [ctx.Process(target=_concurrent_worker, args=(args, device.type, batch_size, steps, warmup, threads,
                                                           barrier, results)) for _ in range(k)]
    for proc in procs:
        proc.start()
    got = [results.get() for _ in procs]
    for proc in procs:
        proc.join()
    errors = [g[3] for g in got if g[3]]
    if errors:
        raise RuntimeError(f"a concurrent benchmark process failed: {errors[0]}")
    span = max(g[1] for g in got) - min(g[0] for g in got)
    mems = [g[2] for g in got]
    return k * steps * batch_size / span, (sum(mems) if all(m is not None for m in mems) else None)


def fused_benchmark(args, cfg, device, steps: int, warmup: int) -> int:
    splits = load_splits(cfg.dataset)
    bs = args.fused_batch_size
    for k in args.replicates:
        try:
            fused = fused_run(cfg, splits, device, bs, k, steps, warmup, args.compile)
        except NotFusable as e:
            print(f"error: this model cannot fuse: {e.reason}", file=sys.stderr)
            return 2
        gc.collect()
        runs = [timed_run(cfg, splits, device, bs, steps, warmup, True, args.workers, args.compile,
                          args.compile_backend) for _ in range(k)]
        sequential = (k / sum(1 / ips for ips, _ in runs),
                      max((m for _, m in runs if m is not None), default=None))
        concurrent = concurrent_run(args, device, bs, k, steps, warmup)
        rates = {}
        for mode, (ips, mem) in (("fused", fused), ("sequential", sequential), ("concurrent", concurrent)):
            rates[mode] = ips
            print(f"fused K={k} bs={bs} mode={mode} images_per_s={ips:.5g} peak_mem_gib={fmt(mem, '.2f')} "
                  f"steps={steps}")
        print(f"fused_ratio K={k} bs={bs} vs_sequential={rates['fused'] / rates['sequential']:.2f} "
              f"vs_concurrent={rates['fused'] / rates['concurrent']:.2f}")
    return 0


def fmt(v, spec=".3g"):
    return "n/a" if v is None else format(v, spec)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--steps", type=int, default=None, help="timed steps per run (default: 100 on CUDA, 1 on the CPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 20 on CUDA, 1 on the CPU)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="default: 128 512 on CUDA; 16 32 on the CPU (where one 512-image step of this model takes ~30 s)")
    p.add_argument("--data-batches", type=int, default=None,
                   help="batches timed for the input pipeline alone (default: 100 CUDA, 20 CPU; 0: skip)")
    p.add_argument("--dataset", choices=["fake", "cifar10"], default="fake")
    p.add_argument("--augment", default="norm_crop_flip_rotate", help="conf/augment option (device-capable)")
    p.add_argument("--data-root", default="data", help="dataset.root (CIFAR-10 files; the decoded cache goes under it)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="reference DataLoader workers")
    p.add_argument("--trials", type=int, default=5, help="trials in the mini sweep (0: skip it)")
    p.add_argument("--trial-steps", type=int, default=None, help="steps per mini-sweep trial (default: 20 CUDA, 1 CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile our model")
    p.add_argument("--compile-backend", default="inductor",
                   help="torch.compile backend with --compile (eager: Dynamo alone, for a quick CPU check)")
    p.add_argument("--pipelines", nargs="+", choices=["ours", "reference"], default=["ours", "reference"],
                   help="which trainings to time (the ratio line needs both)")
    p.add_argument("--fused", action="store_true",
                   help="time K replicates fused / sequential / concurrent instead (see above)")
    p.add_argument("--replicates", type=int, nargs="+", default=[1, 2, 4, 8], help="K values with --fused")
    p.add_argument("--fused-batch-size", type=int, default=128, help="per-replicate batch size with --fused")
    p.add_argument("--override", nargs="*", default=[], help="extra Hydra overrides, e.g. dataset.train_size=5000")
    args = p.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    device = torch.device("cuda" if args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available()) else "cpu")
    cuda = device.type == "cuda"
    steps = args.steps or (100 if cuda else 1)
    warmup = args.warmup if args.warmup is not None else (20 if cuda else 1)
    trial_steps = args.trial_steps or (20 if cuda else 1)
    batch_sizes = args.batch_sizes or ([128, 512] if cuda else [16, 32])
    data_batches = args.data_batches if args.data_batches is not None else (100 if cuda else 20)
    if cuda:
        torch.backends.cudnn.benchmark = True

    cfg = compose(args)
    n_params = count_parameters(build_model(cfg, for_counting=True))
    flops = flops_per_image(cfg)
    peak = device_peak(device)
    what = torch.cuda.get_device_name(device) if cuda else f"CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    print(f"model resnet18_trunc params={n_params} dataset={args.dataset} augment={args.augment} "
          f"gflop_per_image_fwd_bwd={flops / 1e9:.4f}")
    print(f"device {device.type} ({what}) peak_bf16_tflops={fmt(peak, '.0f')} torch={torch.__version__}")
    if args.fused:
        return fused_benchmark(args, cfg, device, steps, warmup)

    t0 = time.perf_counter()
    splits = load_splits(cfg.dataset)
    print(f"data train={len(splits.train)} load_s={time.perf_counter() - t0:.3f}")
    for bs in batch_sizes:
        if data_batches:
            rates = {name: data_only(cfg, splits, device, bs, data_batches, ours, args.workers)
                     for name, ours in (("ours", True), ("reference", False)) if name in args.pipelines}
            if len(rates) == 2:
                print(f"data bs={bs} ours_images_per_s={rates['ours']:.1f} "
                      f"reference_images_per_s={rates['reference']:.1f} "
                      f"speedup={rates['ours'] / rates['reference']:.2f} (input pipeline alone, no model)")
        speeds = {}
        for name, ours in (("ours", True), ("reference", False)):
            if name not in args.pipelines:
                continue
            ips, mem = timed_run(cfg, splits, device, bs, steps, warmup, ours, args.workers, args.compile,
                                 args.compile_backend)
            speeds[name] = ips
            tflops = ips * flops / 1e12
            mfu = tflops / peak if peak else None
            setup = ("device pipeline, " + ("bf16, channels_last" if cuda else "fp32")
                     + (f", torch.compile({args.compile_backend})" if args.compile else "")) if ours else \
                f"PIL DataLoader, {args.workers} workers, fp32"
            print(f"result pipeline={name} bs={bs} images_per_s={ips:.5g} epoch_s={EPOCH_IMAGES / ips:.5g} "
                  f"peak_mem_gib={fmt(mem, '.2f')} tflops={tflops:.4g} mfu={fmt(mfu, '.3f')} steps={steps} ({setup})")
        if len(speeds) == 2:
            print(f"ratio bs={bs} speedup={speeds['ours'] / speeds['reference']:.2f}")
    if args.trials > 0:
        overheads, data_times, first_steps = mini_sweep(cfg, device, args.trials, trial_steps, batch_sizes[0])

        def mean(v):
            v = v[1:] or v  # trials after the first (the first may decode or read the disk cache)
            return sum(v) / len(v)

        print(f"sweep trials={args.trials} bs={batch_sizes[0]} overhead_s_mean={mean(overheads):.3f} "
              f"overhead_s_max={max(overheads[1:] or overheads):.3f} first_trial_overhead_s={overheads[0]:.3f} "
              f"data_s_mean={mean(data_times):.3f} first_step_s_mean={mean(first_steps):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
