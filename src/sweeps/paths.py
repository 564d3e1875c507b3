"""Where the Hydra config tree lives.

In a checkout (editable install) it is ``<repo>/conf``; a wheel carries a copy
as ``sweeps/conf``. Either way every entrypoint composes the same tree.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def conf_dir() -> Path:
    for candidate in (_PACKAGE.parents[1] / "conf", _PACKAGE / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"no Hydra config tree (train.yaml) next to {_PACKAGE}")


CONF_DIR = str(conf_dir())
