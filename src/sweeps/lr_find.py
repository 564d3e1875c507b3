"""``python -m sweeps.lr_find <overrides>``: seed 003's learning-rate range test.

Leslie Smith's test (as 003 ran it with davidtvs/pytorch-lr-finder, which we
use too): raise the learning rate exponentially over a few hundred batches,
plot the loss against it, and suggest the steepest-descent lr as the max_lr of
a OneCycle schedule. The model, data and optimizer come from the same config
tree as ``sweeps.train``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from omegaconf import open_dict  # noqa: E402

from sweeps.cli import compose, user_errors  # noqa: E402
from sweeps.config import validate  # noqa: E402
from sweeps.data import load_splits  # noqa: E402
from sweeps.data.augment import train_transform  # noqa: E402
from sweeps.data.dataloader import train_loader  # noqa: E402
from sweeps.engine import build_optimizer, select_device  # noqa: E402
from sweeps.errors import ConfigError  # noqa: E402
from sweeps.models import build_model, check_budget, model_size  # noqa: E402
from sweeps.overrides import check  # noqa: E402


def lr_range_test(overrides: list[str], start_lr: float, end_lr: float, iters: int, out: Path) -> float:
    from torch_lr_finder import LRFinder

    if not 0 < start_lr < end_lr:
        raise ConfigError(f"--start-lr={start_lr} and --end-lr={end_lr} must satisfy 0 < start < end; e.g. 1e-7 and 10.")
    if iters < 10:
        raise ConfigError(f"--iters={iters} is too few to see a trend; use at least 10 (100 is typical).")
    check(overrides)
    cfg = compose(overrides, with_hydra=True)
    with open_dict(cfg):
        cfg.hydra.runtime.cwd = str(Path.cwd())  # ${hydra:runtime.cwd} outside a Hydra run
        cfg.optim.lr = start_lr
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    validate(cfg)
    if int(cfg.replicates) != 1 or cfg.get("replicate_seeds") is not None:
        raise ConfigError(f"replicates={cfg.replicates} (replicate_seeds={cfg.get('replicate_seeds')}): the learning-rate "
                          "range test runs one seed and picks no result to aggregate; drop replicates (and "
                          "replicate_seeds), or run it with seed=<n> once per seed you want to see.")
    check_budget(model_size(cfg), cfg)
    torch.manual_seed(int(cfg.seed))
    device = select_device(str(cfg.trainer.device))
    splits = load_splits(cfg.dataset)
    model = build_model(cfg).to(device)
    loader = train_loader(splits.train, train_transform(cfg.augment, cfg.dataset), int(cfg.trainer.batch_size),
                          int(cfg.seed), int(cfg.trainer.num_workers))
    finder = LRFinder(model, build_optimizer(cfg, model), torch.nn.CrossEntropyLoss(), device=device)
    finder.range_test(loader, end_lr=end_lr, num_iter=iters, step_mode="exp", diverge_th=5)
    fig, ax = plt.subplots(figsize=(6, 4))
    skip_start, skip_end = min(10, iters // 10), min(5, iters // 20)
    _, suggested = finder.plot(skip_start=skip_start, skip_end=skip_end, ax=ax, suggest_lr=True, show_lr=None)
    ax.set_title(f"LR range test: {cfg.tracking.experiment} (suggested max_lr {suggested:.3g})" if suggested else "LR range test")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")
    plt.close(fig)
    if suggested is None:
        raise ConfigError("the loss curve was too short to suggest a learning rate; raise --iters or --end-lr.")
    return float(suggested)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sweeps.lr_find", description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, as for sweeps.train")
    parser.add_argument("--start-lr", type=float, default=1e-7)
    parser.add_argument("--end-lr", type=float, default=10.0)
    parser.add_argument("--iters", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path("lr_find.png"))
    # Intermixed: overrides may stand before or after the options.
    args = parser.parse_intermixed_args(sys.argv[1:] if argv is None else argv)
    with user_errors():
        lr = lr_range_test(args.overrides, args.start_lr, args.end_lr, args.iters, args.out)
    print(f"plot: {args.out.resolve()}")
    print(f"suggested max_lr: {lr:.4g}  (e.g. schedule=onecycle optim.lr={lr:.2g})")


if __name__ == "__main__":
    main()
