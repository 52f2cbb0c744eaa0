"""Fine-tuning after pruning: exact masks, a falling loss, disjoint data, checkpoints, errors, the CLI."""

import json
import math

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from prunecli import pipeline
from prunecli.config import config_dir
from prunecli.data import DataOptions, calibration_spans, calibration_windows, source_options
from prunecli.data.reviews import review_splits
from prunecli.errors import PruneError, RunFailedError
from prunecli.finetune import validate as validate_finetune
from prunecli.evaluate.accuracy import f1_score
from prunecli.finetune.classifier import score
from prunecli.finetune.lm import lm_loss, mean_ppl, training_windows, window_batches
from prunecli.finetune.loop import TrainTask, Trainer, lr_factor
from prunecli.finetune.masks import MaskKeeper
from prunecli.finetune.options import LMOptions
from prunecli.methods import METHODS, PruneContext
from prunecli.methods.targets import select_layers, weight_matrix
from prunecli.options import parse
from tests.conftest import run_prune, tiny_model

CPU = torch.device("cpu")
IGNORE = ["lm_head", "embed", "wte", "wpe", "pooler"]


def options(**overrides):
    base = dict(lr=1e-2, weight_decay=0.1, betas=[0.9, 0.999], eps=1e-8, warmup_steps=0, warmup_ratio=0.0, decay="constant",
                min_lr_ratio=0.0, max_grad_norm=1.0, precision="auto", grad_accum=1, eval_every=100, keep_best=False, checkpoint="memory")
    return OmegaConf.create(base | overrides)


def pruned_llama(sparsity=0.5):
    model = tiny_model("llama")
    layers = select_layers(model, "all", IGNORE)
    METHODS.get("magnitude").prune(PruneContext(model, layers, sparsity, None, OmegaConf.create({"name": "magnitude"}), CPU))
    return model, layers


def lm_task(windows, batch_size=4, validate=None):
    return TrainTask(window_batches(windows, batch_size, CPU), lm_loss, validate or (lambda m: mean_ppl(m, windows[:2], 2, CPU)),
                     "val_ppl", False, len(windows) // batch_size)


def random_windows(n=8, seqlen=16, seed=0):
    return torch.randint(0, 97, (n, seqlen), generator=torch.Generator().manual_seed(seed))


def test_masks_preserved_exactly_through_adamw_with_weight_decay():
    model, layers = pruned_llama()
    zeros_before = {name: weight_matrix(m) == 0 for name, m in layers.items()}
    weights_before = {name: weight_matrix(m).clone() for name, m in layers.items()}
    keeper = MaskKeeper(layers)
    Trainer(options(weight_decay=0.1, lr=1e-2), CPU, None, "val_ppl").train(model, lm_task(random_windows()), 5, keeper)
    for name, module in layers.items():
        weight = weight_matrix(module)
        assert torch.equal(weight == 0, zeros_before[name]), name  # zeros before == zeros after
        assert not torch.equal(weight[~zeros_before[name]], weights_before[name][~zeros_before[name]]), name  # it did train
    assert keeper.mismatches() == []


def test_masked_gradients_are_zero():
    model, layers = pruned_llama()
    keeper = MaskKeeper(layers)
    keeper.register_hooks()
    lm_loss(model.train(), random_windows(2)).backward()
    for name, module in layers.items():
        assert module.weight.grad is not None and bool((module.weight.grad[module.weight == 0] == 0).all()), name
    keeper.remove_hooks()


def test_finetuning_lowers_the_training_loss():
    model, layers = pruned_llama()
    windows = random_windows(4)
    with torch.no_grad():
        before = lm_loss(model, windows).item()
    Trainer(options(lr=5e-3, weight_decay=0.0), CPU, None, "val_ppl").train(model, lm_task(windows), 10, MaskKeeper(layers))
    with torch.no_grad():
        after = lm_loss(model, windows).item()
    assert after < before - 0.5, (before, after)


def test_best_checkpoint_is_restored():
    model, layers = pruned_llama()
    values, snapshots = iter([5.0, 1.0, 3.0]), []

    def validate(m):
        snapshots.append({n: p.detach().clone() for n, p in m.named_parameters()})
        return next(values)

    result = Trainer(options(eval_every=1, keep_best=True), CPU, None, "val_ppl").train(model, lm_task(random_windows(), validate=validate), 3, MaskKeeper(layers))
    assert result["best_step"] == 2 and result["best_val_ppl"] == 1.0
    for name, parameter in model.named_parameters():
        assert torch.equal(parameter, snapshots[1][name]), name


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_weights(tmp_path):
    from safetensors.torch import load_file

    model, layers = pruned_llama()
    calls = {"n": 0}

    def exploding(m, batch):
        calls["n"] += 1
        loss = lm_loss(m, batch)
        return loss * math.nan if calls["n"] == 3 else loss

    task = lm_task(random_windows())
    task.loss = exploding
    with pytest.raises(RunFailedError, match="diverged at step 3: loss is nan"):
        Trainer(options(eval_every=1), CPU, tmp_path, "val_ppl").train(model, task, 5, MaskKeeper(layers))
    saved = load_file(str(tmp_path / "finetune" / "last_good.safetensors"))
    assert torch.equal(saved["model.layers.0.mlp.up_proj.weight"], model.model.layers[0].mlp.up_proj.weight)
    rows = pd.read_csv(tmp_path / "train.csv")
    assert list(rows["step"]) == [1, 2, 3] and math.isnan(rows["loss"].iloc[-1])


def test_lr_warmup_then_decay():
    assert [lr_factor(t, 10, 2, "cosine", 0.0) for t in (0, 1, 2)] == [0.5, 1.0, 1.0]
    assert lr_factor(9, 10, 2, "linear", 0.1) == pytest.approx(0.1 + 0.9 * (1 - 7 / 8))
    assert lr_factor(6, 10, 0, "cosine", 0.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.6)))


def test_lora_merge_keeps_the_sparsity():
    pytest.importorskip("peft")
    from prunecli.finetune import lora

    model, layers = pruned_llama()
    zeros_before = {name: weight_matrix(m) == 0 for name, m in layers.items()}
    weights_before = {name: weight_matrix(m).clone() for name, m in layers.items()}
    keeper = MaskKeeper(layers)
    wrapped = lora.wrap(model, list(layers), OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0}))
    Trainer(options(lr=5e-2, weight_decay=0.0), CPU, None, "val_ppl").train(wrapped, lm_task(random_windows()), 3, keeper)
    lora.merge(wrapped, model)
    keeper.apply()
    assert keeper.mismatches() == []
    for name, module in layers.items():
        weight = weight_matrix(module)
        assert torch.equal(weight == 0, zeros_before[name]), name
        assert not torch.equal(weight, weights_before[name]), name  # the adapters were merged
    assert not any("lora" in name for name, _ in model.named_parameters())


class IntTokenizer:
    """Whitespace-separated integers are the token ids (every token of the corpus unique)."""

    eos_token_id = None
    sep_token_id = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [int(x) for x in text.split()]}


def test_training_windows_are_disjoint_from_calibration(tmp_path):
    counter, documents = 0, []
    for length in [10, 80, 33, 60, 5, 70, 41, 90, 25, 64] * 3:
        documents.append(" ".join(str(counter + i) for i in range(length)))
        counter += length
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    tokenizer = IntTokenizer()
    cfg = OmegaConf.create({
        "data": {"calibration": {"source": "text_file", "path": str(path), "field": "text"}, "nsamples": 12, "seqlen": 16, "seed": 0},
        "finetune": {"data": {"source": "text_file", "path": str(path)}, "seqlen": 8, "seed": 1, "val_on": "heldout", "val_windows": 3, "max_train_windows": None},
    })
    calibration = calibration_windows(tokenizer, documents, 12, 16, 0)
    tokens = lambda i: tokenizer(documents[i])["input_ids"]  # noqa: E731
    spans = calibration_spans(tokens, len(documents), 12, 16, 0)
    assert torch.equal(torch.tensor([tokens(d)[s : s + 16] for d, s in spans]), calibration)  # same draws as the calibration sampler
    lm = parse(LMOptions, cfg.finetune, "finetune")
    data = DataOptions(nsamples=12, seqlen=16, seed=0, calibration=source_options(cfg.data.calibration, "data.calibration"))
    text = training_windows(tokenizer, data, lm, None, calibration)
    calibration_tokens = set(calibration.flatten().tolist())
    train, val = set(text.train.flatten().tolist()), set(text.val.flatten().tolist())
    assert len(text.train) > 10 and len(text.val) == 3
    assert not train & calibration_tokens and not val & calibration_tokens and not train & val
    assert text.excluded_tokens == len(calibration_tokens)
    again = training_windows(tokenizer, data, lm, None, calibration)
    assert torch.equal(again.train, text.train)  # seeded


def test_review_split_is_deterministic_and_disjoint():
    first, second = review_splits(0), review_splits(0)
    assert first == second
    sizes = {name: len(part) for name, part in first.items()}
    assert sizes == {"train": 10202, "val": 1275, "test": 1275}  # 12,752 unique of the 12,808 labelled snippets
    texts = {name: {e.text for e in part} for name, part in first.items()}
    assert not texts["train"] & texts["val"] and not texts["train"] & texts["test"] and not texts["val"] & texts["test"]
    assert {e.label for e in first["test"]} == {0, 1}
    assert review_splits(1)["test"] != first["test"]


def test_accuracy_and_f1_on_a_hand_made_example():
    assert f1_score([1, 1, 0, 0, 1], [1, 0, 0, 1, 1]) == pytest.approx(2 / 3)  # tp 2, fp 1, fn 1
    assert f1_score([0, 1, 2, 2], [0, 1, 1, 2], num_classes=3) == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    from prunecli.data.reviews import Example

    class Tokenizer:
        def __call__(self, texts, **kwargs):
            return {"input_ids": torch.tensor([[int(t)] for t in texts])}

    class Model(torch.nn.Module):
        config = OmegaConf.create({"num_labels": 2})

        def forward(self, input_ids):
            logits = torch.nn.functional.one_hot(input_ids[:, 0], 2).float()
            return type("Output", (), {"logits": logits})

    examples = [Example(str(p), y) for p, y in zip([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])]
    metrics = score(Model(), Tokenizer(), examples, 2, 8, CPU)
    assert metrics["accuracy"] == pytest.approx(3 / 5) and metrics["f1"] == pytest.approx(2 / 3)


# --- whole runs, in process (composed exactly as `prune run` composes them) and one through the CLI --------------

def tiny_overrides(corpus):
    return ["model=tiny_llama", "benchmark=none", "data.seqlen=32", "data.max_eval_tokens=256", "data.nsamples=8",
            "data/eval=text_file", f"data.eval.path={corpus}", "data/calibration=text_file", f"data.calibration.path={corpus}"]


def lm_overrides(corpus):
    return ["finetune=lm", "finetune.data.source=text_file", f"finetune.data.path={corpus}", "finetune.eval_every=2", "finetune.val_windows=2"]


def composed(overrides):
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        return compose("run", overrides=overrides)


def run_inprocess(overrides, run_dir):
    cfg = composed(overrides)
    prepared = pipeline.prepare(cfg)
    metrics, layers = pipeline.execute(prepared, run_dir, overrides)
    return prepared, metrics, layers


def test_gradual_run_ends_exactly_at_the_target(tmp_path, corpus):
    prepared, metrics, rows = run_inprocess([*tiny_overrides(corpus), *lm_overrides(corpus), "finetune.steps=6", "method=magnitude", "sparsity=0.6",
                                             "schedule=gradual", "schedule.frequency=2", "schedule.end_step=4", "eval.baseline=false"], tmp_path)
    assert all(row["zeros"] == math.floor(0.6 * row["numel"]) for row in rows)
    train = pd.read_csv(tmp_path / "train.csv")
    assert list(train["step"]) == [1, 2, 3, 4, 5, 6]
    assert train["sparsity"].is_monotonic_increasing and train["sparsity"].iloc[-1] == metrics["sparsity_actual"]
    assert [e["step"] for e in metrics["finetune_info"]["pruning_events"]] == [2, 4]  # step 0 has target 0
    assert metrics["finetune_best_step"] >= 5  # only checkpoints at the final sparsity are candidates


def test_iterative_run_reaches_the_target(tmp_path, corpus):
    _, metrics, rows = run_inprocess([*tiny_overrides(corpus), *lm_overrides(corpus), "finetune.steps=2", "method=wanda", "sparsity=0.5",
                                      "schedule=iterative", "schedule.cycles=2", "eval.baseline=false"], tmp_path)
    assert metrics["sparsity_actual"] == 0.5 and metrics["finetune_steps"] == 4
    assert [c["cycle"] for c in metrics["finetune_info"]["cycles"]] == [1, 2]
    assert metrics["finetune_info"]["cycles"][0]["sparsity"] < 0.5


def test_structured_shrunk_model_just_trains(tmp_path, corpus):
    _, metrics, _ = run_inprocess([*tiny_overrides(corpus), *lm_overrides(corpus), "finetune.steps=2", "method=ffn", "sparsity=0.5",
                                   "eval.baseline=false"], tmp_path)
    assert metrics["params_removed"] > 0 and metrics["finetune_steps"] == 2 and math.isfinite(metrics["ppl"])


def test_classifier_run_reports_accuracy_and_f1(tmp_path):
    _, metrics, rows = run_inprocess(["model=tiny_bert_classifier", "benchmark=none", "eval=accuracy", "eval.accuracy.max_examples=64",
                                      "method=magnitude", "sparsity=0.5", "finetune=classifier", "finetune.epochs=null", "finetune.steps=3",
                                      "finetune.max_train_examples=64", "finetune.max_val_examples=32", "finetune.batch_size=16",
                                      "finetune.eval_before=true"], tmp_path)
    assert 0 <= metrics["accuracy"] <= 1 and 0 <= metrics["f1"] <= 1 and metrics["eval_samples"] == 64
    assert 0 <= metrics["accuracy_before_finetune"] <= 1 and 0 <= metrics["f1_before_finetune"] <= 1
    assert metrics["finetune_steps"] == 3 and metrics["finetune_epochs"] is None
    assert all(row["zeros"] == row["numel"] // 2 for row in rows)
    assert "val_accuracy" in pd.read_csv(tmp_path / "train.csv")


@pytest.mark.parametrize("overrides, message", [
    (["finetune.lr=0"], "finetune.lr must be a number > 0 (got 0)"),
    (["finetune.lr=-0.001"], "finetune.lr must be a number > 0"),
    (["finetune.epochs=2"], "set exactly one of finetune.steps and finetune.epochs"),
    (["finetune.decay=step"], "unknown finetune.decay"),
    (["schedule=gradual", "schedule.start_step=5", "schedule.end_step=2"], "schedule.end_step=2 is before schedule.start_step=5"),
    (["schedule=gradual", "method=sparsegpt"], "method=sparsegpt cannot do"),
    (["schedule=iterative", "method=layers"], "method=layers cannot do"),
    (["finetune.batch_size=four"], "finetune.batch_size must be an integer (got 'four')"),
    (["+finetune.warmup=3"], "unknown key finetune.warmup (did you mean finetune.warmup_steps?)"),
    (["finetune.checkpoint=cloud"], "unknown finetune.checkpoint 'cloud' (choose from: memory, disk)"),
])
def test_bad_finetune_config_is_rejected_before_loading(corpus, overrides, message):
    with pytest.raises(PruneError) as err:
        pipeline.validate(composed([*tiny_overrides(corpus), *lm_overrides(corpus), *overrides]))
    assert message in str(err.value)


@pytest.mark.parametrize("name", ["lm", "lora", "classifier"])
def test_finetune_yaml_defaults_match_the_options(name):
    """Each fine-tune YAML (as Hydra composes it) lists exactly its options' fields, with their defaults."""
    import dataclasses

    from prunecli.finetune import FINETUNES

    node = OmegaConf.to_container(composed([f"finetune={name}"]).finetune, resolve=True)
    options = FINETUNES.get(name)
    assert set(node) == {f.name for f in dataclasses.fields(options)}
    defaults = options(name=name)
    assert {key: value for key, value in node.items() if key != "data"} == {key: getattr(defaults, key) for key in node if key != "data"}


@pytest.mark.parametrize("overrides, message", [
    (["finetune.batch_size=512"], "fewer than one batch (finetune.batch_size=512 x 32 = 16384 tokens)"),
    (["model.dtype=bf16"], "fine-tuning needs fp32 master weights"),
    (["schedule=gradual", "finetune.steps=4", "schedule.end_step=4"], "must come before the last fine-tune step"),
])
def test_bad_finetune_data_is_rejected_in_prepare(corpus, overrides, message):
    with pytest.raises(PruneError) as err:
        pipeline.prepare(composed([*tiny_overrides(corpus), *lm_overrides(corpus), "finetune.steps=3", *overrides]))
    assert message in str(err.value)


def test_classifier_finetune_needs_a_classifier_model(corpus):
    with pytest.raises(PruneError, match="finetune=classifier trains a sequence_classifier, but model tiny_llama is a causal_lm: use model=minilm_classifier"):
        pipeline.prepare(composed([*tiny_overrides(corpus), "finetune=classifier"]))


def test_lora_without_peft_names_the_pip_command(monkeypatch, corpus):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    with pytest.raises(PruneError, match=r"pip install 'prunecli\[lora\]'"):
        validate_finetune(composed([*tiny_overrides(corpus), "finetune=lora"]))


def test_cli_finetune_run_writes_train_csv_and_keeps_the_sparsity(tmp_path, corpus):
    result = run_prune("run", *tiny_overrides(corpus), *lm_overrides(corpus), "method=magnitude", "sparsity=0.5", "finetune.steps=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = [p for p in (tmp_path / "outputs").glob("*/*") if p.is_dir()]
    train = pd.read_csv(run_dir / "train.csv")
    assert list(train.columns) == ["step", "cycle", "epoch", "loss", "lr", "grad_norm", "sparsity", "val_ppl", "elapsed_s"]
    assert list(train["step"]) == [1, 2, 3] and (train["sparsity"] == 0.5).all() and train["val_ppl"].notna().sum() == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed" and metrics["sparsity_actual"] == 0.5
    assert metrics["ppl_before_finetune"] > 1 and metrics["finetune_s"] > 0 and metrics["finetune"] == "lm"
    layers = pd.read_csv(run_dir / "layers.csv")
    assert (layers["zeros"] == layers["numel"] // 2).all()
    results = pd.read_csv(run_dir / "results.csv")
    assert results.loc[0, "finetune"] == "lm" and results.loc[0, "schedule"] == "oneshot"
    assert results.loc[0, "finetune_steps"] == 3 and pd.isna(results.loc[0, "finetune_epochs"])  # set by steps
    assert results.loc[0, "ppl_before_finetune"] == pytest.approx(metrics["ppl_before_finetune"])


def test_cli_schedule_on_a_structured_method_is_one_line(tmp_path, corpus):
    result = run_prune("run", *tiny_overrides(corpus), *lm_overrides(corpus), "method=heads", "schedule=gradual", cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "schedule=gradual re-applies the method" in lines[0], result.stderr
    assert not list((tmp_path / "outputs").glob("*/*"))


def test_dense_baseline_fine_tune_keeps_no_masks(tmp_path, corpus):
    """method=dense prunes nothing, so an exact zero of the dense weights is not a pruned weight to freeze."""
    from transformers import AutoTokenizer

    from prunecli.models.packaged import minilm_folder
    from prunecli.models.tiny import build_tiny
    from tests.conftest import TINY_CONFIGS

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    model, _ = build_tiny("llama", TINY_CONFIGS["llama"] | {"vocab_size": len(tokenizer)})
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[:4].zero_()
    folder = tmp_path / "with_zeros"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    overrides = [*tiny_overrides(corpus), *lm_overrides(corpus), "model=hf", f"model.name_or_path={folder}", "method=dense",
                 "finetune.steps=3", "finetune.lr=1e-2", "eval.baseline=false"]
    prepared, metrics, _ = run_inprocess(overrides, tmp_path / "run")
    assert prepared.loaded.model.model.layers[0].mlp.up_proj.weight[:4].abs().sum() > 0  # trained like every other weight
