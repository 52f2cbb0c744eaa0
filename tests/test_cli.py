"""The `prune` command: bad input gives one line and a non-zero exit, sweeps and reports work."""

import csv
import json

import pandas as pd
import pytest
import torch

from tests.conftest import REPO, assert_clean_failure, finished_run, run_dirs, run_prune, tiny_args, tiny_cli_args


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["method=nope"], "unknown method 'nope' (choose from: admm, dense, ffn"),
        (["model=gpt5"], "unknown model 'gpt5' (choose from:"),
        (["data/eval=imagenet"], "unknown data/eval 'imagenet'"),
        (["sparsity=1.0"], "sparsity must be a number in [0, 1)"),
        (["sparsity=-0.1"], "sparsity must be a number in [0, 1)"),
        (["pattern=2:4", "sparsity=0.7"], "pattern 2:4 means sparsity 0.5"),
        (["model=hf", "model.name_or_path=./no/such/folder"], "does not exist"),
        (["data.seqlen=4096"], "longer than the context"),
        (["data.max_eval_tokens=16", "data.seqlen=32"], "shorter than one window"),
        (["method=wanda", "data.nsamples=0"], "data.nsamples must be a positive integer"),
        (["method=wanda", "pattern=5:10", "sparsity=0.5"], "M=10 does not divide the input dimension 64 of layer model.layers.0.self_attn.q_proj"),
        (["+experiment=nope"], "unknown experiment 'nope' (choose from: "),
        (["+experiment/sparsity_paradox=nope"], "unknown experiment/sparsity_paradox 'nope' (choose from: dense, filters, nm24, structured, unstructured)"),
        (["benchmark=backends", "benchmark.backends=[dense,fpga]"], "unknown benchmark backend 'fpga'"),
        (["logger=wandb"], "unknown logger 'wandb'"),
        (["allocation=owl", "pattern=2:4"], "N:M"),
        (["allocation=fancy"], "unknown allocation 'fancy'"),
        (["sparsty=0.5"], "unknown key 'sparsty' (did you mean 'sparsity'?)"),
        (["+sparsty=0.9"], "'+sparsty' adds a top-level key that nothing reads (did you mean 'sparsity'?)"),
        (["method=sparsegpt", "method.percdmp=0"], "unknown key 'method.percdmp' (did you mean 'method.percdamp'?)"),
        (["method=sparsegpt", "method.percdamp=-0.1"], "method.percdamp must be a number >= 0 (got -0.1)"),
        (["data.max_eval_tokens=0"], "data.max_eval_tokens must be a positive integer, or null for the whole text (got 0)"),
        (["model.device=tpu"], "unknown model.device 'tpu' (choose from: auto, cpu, cuda, cuda:N)"),
        (["data.eval.path=/"], "text file '/' is a directory"),
        (["-m", "method=wanda,sparsegpt", "method.percdamp=0.1"], "'method.percdamp' does not exist for the sweep's jobs with method=wanda"),
    ],
)
def test_bad_input_one_line_nonzero_exit_no_run_dir(tmp_path, corpus, overrides, message):
    result = run_prune("run", *tiny_args(corpus), *overrides, cwd=tmp_path)
    assert_clean_failure(result, tmp_path, message)


def test_calibration_text_too_short(tmp_path, corpus):
    short = tmp_path / "short.jsonl"
    short.write_text('{"text": "only a few words"}\n{"text": "and a few more"}\n', encoding="utf-8")
    result = run_prune("run", *tiny_args(corpus), "method=sparsegpt", f"data.calibration.path={short}", cwd=tmp_path)
    assert_clean_failure(result, tmp_path, "calibration text is too short")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here, so asking for it is not an error")
def test_cuda_requested_without_cuda(tmp_path, corpus):
    result = run_prune("run", *tiny_args(corpus), "model.device=cuda", cwd=tmp_path)
    assert_clean_failure(result, tmp_path, "CUDA is not available")


def test_nan_loss_marks_the_run_failed_with_the_reason(tmp_path, corpus):
    from transformers import AutoTokenizer

    from prunecli.models.packaged import minilm_folder
    from prunecli.models.tiny import build_tiny
    from tests.conftest import TINY_CONFIGS

    tokenizer = AutoTokenizer.from_pretrained(str(minilm_folder()))
    model, _ = build_tiny("llama", TINY_CONFIGS["llama"] | {"vocab_size": len(tokenizer)})
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    folder = tmp_path / "broken"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    result = run_prune("run", *tiny_args(corpus), "model=hf", f"model.name_or_path={folder}", "method=magnitude", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("prune: error: run failed: evaluation loss is nan")
    assert "from the unpruned model" in result.stderr  # the baseline is scored first and names itself
    (run_dir,) = run_dirs(tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "failed" and "non-finite" in metrics["error"]
    assert "Traceback" in (run_dir / "prune.log").read_text()
    assert "Traceback" not in result.stdout + result.stderr  # the console gets the one line
    dense = run_prune("run", *tiny_args(corpus), "model=hf", f"model.name_or_path={folder}", "method=dense", cwd=tmp_path)
    assert dense.returncode == 1 and "from the model (method=dense, not pruned)" in dense.stderr and "pruned model" not in dense.stderr


def test_oneshot_methods_end_to_end_on_a_tiny_model(tmp_path, corpus):
    result = run_prune("run", "-m", *tiny_args(corpus), "method=wanda,sparsegpt", "pattern=2:4", "sparsity=0.5",
                       "data.nsamples=4", "eval.baseline=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    records = [json.loads(p.read_text()) for p in (tmp_path / "outputs").rglob("metrics.json")]
    assert sorted(r["method"] for r in records) == ["sparsegpt", "wanda"]
    for record in records:
        assert record["status"] == "completed" and record["sparsity_actual"] == 0.5 and record["pattern"] == "2:4"
        calibration = record["calibration"]
        assert calibration["nsamples"] == 4 and calibration[record["method"]]["windows"] == 4
        assert len(calibration[record["method"]]["block_seconds"]) == 2
        assert record["prune_s"] >= calibration[record["method"]]["seconds"]


def test_unknown_command_and_version(tmp_path):
    assert run_prune("frobnicate", cwd=tmp_path).returncode == 2
    version = run_prune("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("prune ")


def test_single_run_writes_all_outputs(tmp_path, corpus):
    result = run_prune("run", *tiny_args(corpus), "method=magnitude", "sparsity=0.5", "save_model=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path)
    assert {"metrics.json", "results.csv", "layers.csv", "prune.log", ".hydra", "model"} <= {p.name for p in run_dir.iterdir()}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "completed"
    assert metrics["sparsity_actual"] == pytest.approx(0.5)
    for key in ["run_id", "model", "method", "pattern", "sparsity_target", "params_total", "params_nonzero", "ppl", "prune_s", "eval_s"]:
        assert key in metrics, key
    assert metrics["ppl"] > 1 and metrics["ppl_dense"] > 1
    layers = pd.read_csv(run_dir / "layers.csv")
    assert list(layers.columns) == ["name", "shape", "numel", "zeros", "sparsity"]
    assert (layers["zeros"] == layers["numel"] // 2).all()
    assert (run_dir / "model" / "model.safetensors").exists()
    # The saved model reloads through model=hf with the same sparsity.
    again = run_prune("run", *tiny_args(corpus), "model=hf", f"model.name_or_path={run_dir / 'model'}", "method=dense", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    reloaded = json.loads((run_dirs(tmp_path)[-1] / "metrics.json").read_text())
    assert reloaded["sparsity_actual"] == pytest.approx(0.5)
    assert reloaded["ppl"] == pytest.approx(metrics["ppl"], rel=1e-5)


def test_multirun_then_report_shows_every_row(tmp_path, corpus):
    result = run_prune("run", "-m", *tiny_args(corpus), "method=dense,magnitude", "sparsity=0.5", "eval.baseline=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = run_prune("report", "outputs", cwd=tmp_path)
    assert report.returncode == 0, report.stderr
    frame = pd.read_csv(tmp_path / "outputs" / "report.csv")
    assert sorted(frame["method"]) == ["dense", "magnitude"]
    assert (frame["status"] == "completed").all()
    assert "magnitude" in (tmp_path / "outputs" / "report.md").read_text()
    bad = run_prune("report", "outputs", "--columns", "method,nonsense", cwd=tmp_path)
    assert bad.returncode == 2 and "nonsense" in bad.stderr


def test_sweep_with_an_invalid_value_runs_the_others_and_exits_nonzero(tmp_path, corpus):
    result = run_prune("run", "-m", *tiny_args(corpus), "method=magnitude", "sparsity=0.5,1.5", "eval.baseline=false", cwd=tmp_path)
    assert result.returncode == 1
    records = [json.loads(p.read_text()) for p in (tmp_path / "outputs").rglob("metrics.json")]
    assert sorted(r["status"] for r in records) == ["completed", "failed"]
    failed = next(r for r in records if r["status"] == "failed")
    assert "sparsity must be a number in [0, 1)" in failed["error"]
    report = run_prune("report", "outputs", cwd=tmp_path)
    assert report.returncode == 0 and "1 failed run" in report.stdout


def test_unknown_experiment_lists_every_preset(tmp_path, corpus):
    presets = sorted(path.stem for path in (REPO / "experiments").glob("*.yaml"))
    result = run_prune("run", *tiny_args(corpus), "+experiment=nope", cwd=tmp_path)
    assert_clean_failure(result, tmp_path, f"unknown experiment 'nope' (choose from: {', '.join(presets)})")


@pytest.mark.parametrize("overrides, described", [
    ([], "perplexity on wiki_sample  max_eval_tokens=16384"),
    (["model=minilm_classifier", "eval=accuracy", "eval.accuracy.max_examples=100"], "accuracy on the task's test split  max_examples=100"),
    (["model=small_cnn", "eval=accuracy"], "accuracy on fashion_mnist  eval_samples="),
    (["eval=none"], "none"),
])
def test_run_header_names_what_the_evaluation_scores(overrides, described):
    from hydra import compose, initialize_config_dir
    from prunecli.config import config_dir
    from prunecli.records import eval_description

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        assert eval_description(compose("run", overrides=overrides)).startswith(described)


def test_every_stage_records_its_peak_memory_and_the_run_peak_is_their_maximum(tmp_path, corpus):
    result = run_prune("run", *tiny_args(corpus), "method=wanda", cwd=tmp_path)
    _, metrics = finished_run(result, tmp_path)
    peaks = metrics["stage_peak_mb"]
    assert set(peaks) == set(metrics["timings"]) >= {"load", "data", "calibration_data", "prune", "eval"}
    assert all(stage["rss"] > 0 for stage in peaks.values())
    assert metrics["peak_memory_mb"] == max(stage["rss"] for stage in peaks.values())


def test_results_say_on_what_the_figures_were_measured(tmp_path, corpus):
    result = run_prune("run", *tiny_args(corpus), "method=wanda", "data.max_eval_tokens=64", cwd=tmp_path)
    run_dir, metrics = finished_run(result, tmp_path)
    row = next(csv.DictReader((run_dir / "results.csv").open()))
    assert row["eval_source"] == row["calibration_source"] == f"text_file:{corpus}"
    assert (row["max_eval_tokens"], row["eval_tokens"]) == ("64", str(metrics["eval_tokens"]))
    assert (row["calibration_nsamples"], row["calibration_seqlen"], row["calibration_seed"]) == ("64", "32", "0")
    assert row["benchmark"] == "quick"


def test_console_and_log_say_only_what_the_run_did(tmp_path, corpus):
    from prunecli.console import format_value

    result = run_prune("run", *tiny_cli_args(corpus), "method=magnitude", cwd=tmp_path)
    run_dir, metrics = finished_run(result, tmp_path)
    assert "calibration" not in result.stdout.split("results")[0]  # magnitude draws no calibration data
    log = (run_dir / "prune.log").read_text()
    assert "stage benchmark" not in log and "benchmark" not in metrics["timings"]  # benchmark=none: no stage
    assert f"ppl={format_value(metrics['ppl'])}" in log  # the results table is in prune.log too
    assert format_value(float("nan")) == ""  # a missing figure is blank, as in report.md
    wanda = run_prune("run", *tiny_cli_args(corpus), "method=wanda", cwd=tmp_path)
    assert "nsamples=4" in wanda.stdout.split("results")[0]


def test_piped_output_prints_the_run_directory_on_one_line(tmp_path, corpus):
    run_dir = tmp_path / ("a_folder_name_longer_than_any_terminal_line_" * 3) / "tiny_llama_magnitude_0.5"
    result = run_prune("run", *tiny_args(corpus), "method=magnitude", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"run directory: {run_dir}" in result.stdout.splitlines()


def test_a_narrow_terminal_cuts_text_cells_never_figures_and_keeps_a_path_whole():
    from prunecli.console import make_console, table

    terminal, path = make_console(True, width=40), "/outputs/runs/" + "x" * 60 + "_magnitude_0.5"
    rows = [{"model": "smollm2_135m_instruct_fp32", "method": "magnitude", "ppl": 412.2, "ppl_dense": 22.83, "prune_s": 1234.5}]
    with terminal.capture() as captured:
        terminal.print(f"run directory: {path}")
        terminal.print(table("runs", rows, ["model", "method", "ppl", "ppl_dense", "prune_s"], width=terminal.width))
    lines = captured.get().splitlines()
    assert lines[0] == f"run directory: {path}"  # one line, however narrow the terminal
    top = next(i for i, line in enumerate(lines) if line.startswith("┏"))
    title, rendered = " ".join(line.strip() for line in lines[1:top]), lines[top:]
    assert title == "runs (3 of 5 columns fit the terminal; the report files have all)"
    assert all(len(line) <= 40 for line in rendered) and len(rendered) == 5  # 3 rules, header, one row: no cell split over lines
    assert "│ smollm2_135m_in… │ magnitude │ 412.2 │" in rendered  # text cut with an ellipsis, the figure whole
    piped = make_console(False)
    with piped.capture() as captured:
        piped.print(table("runs", rows, ["model", "method", "ppl", "ppl_dense", "prune_s"], width=piped.width))
    assert "│ smollm2_135m_instruct_fp32 │ magnitude │ 412.2 │ 22.83     │ 1234    │" in captured.get().splitlines()  # piped: all, whole


def test_a_reloaded_pruned_model_is_recorded_as_what_produced_it(tmp_path, corpus):
    pruned = run_prune("run", *tiny_args(corpus), "method=wanda", "pattern=2:4", "save_model=true", cwd=tmp_path)
    assert pruned.returncode == 0, pruned.stderr[-2000:]
    (source,) = run_dirs(tmp_path)
    assert source.name.endswith("_tiny_llama_wanda_2-4")  # the pattern names the folder, not a sparsity it ignores
    produced = pd.read_csv(source / "results.csv").iloc[0]
    saved = json.loads((source / "model" / "config.json").read_text())["prunecli_provenance"]
    assert (saved["method"], saved["pattern"], saved["run_id"], saved["model"]) == ("wanda", "2:4", produced["run_id"], "tiny_llama")

    again = tmp_path / "again"
    again.mkdir()
    reloaded = run_prune("run", *tiny_args(corpus), "model=hf", f"model.name_or_path={source / 'model'}", "method=dense", cwd=again)
    assert reloaded.returncode == 0, reloaded.stderr[-2000:]
    (run,) = run_dirs(again)
    assert run.name.endswith("_hf_dense")  # no sparsity for a method that prunes nothing
    row = pd.read_csv(run / "results.csv").iloc[0]
    assert (row["model"], row["method"], row["pattern"], row["sparsity_target"]) == ("tiny_llama", "wanda", "2:4", 0.5)
    assert row["pruned_from"] == produced["run_id"] and row["ppl"] == produced["ppl"]  # the same model, the same score
    assert "pruned by" in reloaded.stdout and "prunes nothing" in reloaded.stdout
