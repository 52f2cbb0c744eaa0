"""Evaluators (``eval=``): built once per run, then called on the model (dense and pruned)."""

from __future__ import annotations

from typing import Any, Callable

from prunecli.registry import Registry

# An evaluator factory takes (LoadedModel, run config) and returns ``evaluate(model) -> metrics``.
EVALUATORS: Registry[Callable[[Any, Any], Callable[[Any], dict]]] = Registry("eval")


@EVALUATORS.register("none")
def no_evaluation(loaded: Any, cfg: Any) -> Callable[[Any], dict]:
    return lambda model: {}


from prunecli.evaluate import accuracy, perplexity  # noqa: E402,F401
