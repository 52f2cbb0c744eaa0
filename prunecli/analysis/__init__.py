"""Analyses: a stage that studies the run's method on the loaded model instead of pruning it.

``prune run method=<m> analysis=<a>`` builds everything a run of method ``m`` would (typed
options, calibration data, the evaluator), then, in place of the prune stage, runs the analysis
registered as ``a``; the model of the run is left unpruned and is evaluated as the dense
baseline. An analysis is one :class:`Analysis` descriptor::

    register(Analysis("sensitivity", sensitivity, SensitivityOptions, methods=("filters", "ffn", "heads")))

Its options are the ``analysis`` config node (``configs/analysis/<name>.yaml``), parsed once;
what it returns is recorded under its name in ``metrics.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from prunecli.errors import PruneError
from prunecli.methods import PruneContext
from prunecli.options import Options, choice_of, parse
from prunecli.registry import Registry


@dataclass(frozen=True)
class AnalysisOptions(Options):
    """An analysis's options (the ``analysis`` config node)."""


@dataclass
class AnalysisContext:
    """What an analysis may use: the method's context on the unpruned model, the analysis's own
    options, the run's evaluator and the run directory (None: write no files)."""

    method: PruneContext
    options: Any  # the analysis's AnalysisOptions
    evaluate: Callable[[nn.Module], dict]
    run_dir: Path | None = None


@dataclass(frozen=True)
class Analysis:
    """``run(ctx) -> summary`` (recorded as ``metrics[name]``); ``methods``: the methods it can
    study (None: any)."""

    name: str
    run: Callable[[AnalysisContext], dict]
    options: type[AnalysisOptions] = AnalysisOptions
    methods: tuple[str, ...] | None = None

    def parse(self, node: Any, method: str) -> AnalysisOptions:
        """The ``analysis`` node as typed options, after checking this analysis can study ``method``."""
        if self.methods is not None and method not in self.methods:
            raise PruneError(f"analysis={self.name} studies method={'|'.join(self.methods)} (got method={method})")
        return parse(self.options, node, "analysis")


ANALYSES: Registry[Analysis] = Registry("analysis")


def register(analysis: Analysis) -> Analysis:
    return ANALYSES.add(analysis.name, analysis)


def selected(cfg: Any) -> Analysis | None:
    """The run's analysis, or None for ``analysis=none`` (a plain run)."""
    return ANALYSES.chosen(choice_of(cfg, "analysis"))


from prunecli.analysis import sensitivity  # noqa: E402,F401  (registers itself)
