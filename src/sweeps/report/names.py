"""A run's name read back as the overrides it ran with.

A run is named by its command-line overrides (``optim=sgd,optim.lr=0.01``),
so its name alone says how it differs from the other runs of a sweep; the
tokens are the report's only view of a run's configuration.
"""

from __future__ import annotations

from sweeps.config import is_experiment_key

# The value of a token without '=' (e.g. a hand-written run name).
BARE = "\x00"


def split_tokens(run_name: str) -> list[str]:
    """``optim=sgd,model.channels=[8,16]`` -> ['optim=sgd', 'model.channels=[8,16]'].

    Commas inside brackets belong to a list value, not between overrides.
    """
    tokens, depth, cur = [], 0, ""
    for ch in run_name:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth = max(depth - 1, 0)
        if ch == "," and depth == 0:
            tokens.append(cur)
            cur = ""
        else:
            cur += ch
    tokens.append(cur)
    return [t.strip() for t in tokens if t.strip()]


def name_tokens(run_name: str) -> dict[str, str]:
    """{key: value} of a run name made of overrides; 'defaults' (no override) is {}.

    Keys that say where a run is recorded (``tracking.*``, ``hydra/launcher``, ...)
    are no difference between runs worth a column.
    """
    out = {}
    if run_name == "defaults":
        return out
    for token in split_tokens(run_name):
        key, eq, value = token.partition("=")
        key = key.lstrip("+~")
        if not is_experiment_key(key):
            continue
        out[key] = value if eq else BARE
    return out
