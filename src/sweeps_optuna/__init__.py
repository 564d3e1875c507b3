"""The ``sweeps_optuna`` Hydra sweeper as a library: Optuna ask/tell around Hydra jobs.

The Hydra plugin (``hydra_plugins/sweeps_optuna_sweeper``: the Sweeper class and
its structured configs) is a shim over :mod:`.sweeper`. The rest lives here, not
under ``hydra_plugins/``, because Hydra's plugin scanner imports and re-executes
every public module it finds there at start-up: a second execution would give
the classes an app subclasses or catches (:mod:`.contract`, :mod:`.hooks`) a
second identity, and would make every Hydra start-up import Optuna.

Public, for apps: :mod:`.contract` (names, the counting rule, the errors a job
may raise), :mod:`.hooks` (how an app plugs in), :mod:`.storage` (opening a
study's storage, masking passwords). Nothing here imports an app.
"""

__version__ = "0.1.0"
