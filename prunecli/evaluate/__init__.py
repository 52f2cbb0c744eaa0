"""Evaluators (``eval=``): built once per run, then called on the model (dense and pruned).

Each option of the ``eval`` config group writes its settings under its own name
(``eval.perplexity``, ``eval.zeroshot``, ``eval.accuracy``), so options compose as Hydra composes
a list of a group's options: ``eval=[perplexity,zeroshot]`` scores both; ``eval=none`` nothing.
"""

from __future__ import annotations

from typing import Any, Callable

from prunecli.registry import Registry

# An evaluator factory takes (LoadedModel, run config) and returns ``evaluate(model) -> metrics``.
EVALUATORS: Registry[Callable[[Any, Any], Callable[[Any], dict]]] = Registry("eval")


def selected(cfg: Any) -> list[str]:
    """The evaluators the run's ``eval`` node selects: its sub-nodes named like a registered one."""
    return [name for name in EVALUATORS.names() if name in cfg.eval and hasattr(cfg.eval[name], "keys")]


def build(loaded: Any, cfg: Any) -> Callable[[Any], dict]:
    """One ``evaluate(model)`` that runs every selected evaluator and merges their metrics."""
    parts = [EVALUATORS.get(name)(loaded, cfg) for name in selected(cfg)]
    return lambda model: {key: value for part in parts for key, value in part(model).items()}


from prunecli.evaluate import accuracy, perplexity, zeroshot  # noqa: E402,F401
