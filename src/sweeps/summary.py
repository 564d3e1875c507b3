"""``python -m sweeps.summary <overrides>``: a model's layers and parameter count.

Planning an ablation under the 5M budget needs the count of a configuration
before anything is trained; this builds the model from the same config tree as
``sweeps.train`` on the meta device (no memory, no data) and prints one row
per layer, ending with the line ``params: <integer>``.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from sweeps.cli import compose, user_errors
from sweeps.config import validate
from sweeps.models import build_model, count_parameters
from sweeps.overrides import check


def layer_table(model: nn.Module, in_shape: tuple[int, ...]) -> list[tuple[str, str, str, int]]:
    """(name, type, output shape, own params) of each leaf module, in call order."""
    rows: list[tuple[str, str, str, int]] = []
    hooks = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            def hook(mod, _inp, out, name=name):
                shape = tuple(out.shape) if isinstance(out, torch.Tensor) else "?"
                rows.append((name, type(mod).__name__, str(shape), sum(p.numel() for p in mod.parameters(recurse=False))))
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(in_shape, device="meta"))
    except Exception:  # noqa: BLE001 - shapes are a nicety; the count below is what matters
        rows = [(n, type(m).__name__, "?", sum(p.numel() for p in m.parameters(recurse=False)))
                for n, m in model.named_modules() if next(m.children(), None) is None]
    finally:
        for h in hooks:
            h.remove()
    return rows


def summarize(overrides: list[str]) -> str:
    check(overrides)
    cfg = compose(overrides)
    validate(cfg)
    model = build_model(cfg, for_counting=True)
    ds = cfg.dataset
    rows = layer_table(model, (1, int(ds.channels), int(ds.image_size), int(ds.image_size)))
    width = max([len(r[0]) for r in rows] + [5])
    lines = [f"{'layer':<{width}}  {'type':<18} {'output':<20} {'params':>10}"]
    lines += [f"{n:<{width}}  {t:<18} {s:<20} {p:>10,}" for n, t, s, p in rows]
    n_params = count_parameters(model)
    budget = cfg.get("budget", {}).get("max_params")
    if budget is None:
        verdict = "budget: none (budget.max_params=null)"
    elif n_params <= budget:
        verdict = f"budget: fits ({n_params:,} <= {int(budget):,}, {int(budget) - n_params:,} to spare)"
    else:
        verdict = f"budget: OVER by {n_params - int(budget):,} ({n_params:,} > {int(budget):,}); sweeps.train would refuse it"
    lines += [f"input: {ds.name} {int(ds.channels)}x{int(ds.image_size)}x{int(ds.image_size)}, {int(ds.num_classes)} classes", verdict, f"params: {n_params}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help"} & set(argv):
        print(f"usage: python -m sweeps.summary [OVERRIDE ...]\n\n{__doc__.strip()}")
        return
    with user_errors():
        print(summarize(argv))


if __name__ == "__main__":
    main()
