"""``prune report``: stacking, de-duplication, --where, --pivot, --format, --plot, latency merge.

Every test builds synthetic run directories (results.csv + metrics.json) in tmp_path; no model runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import pytest

from prunecli import report
from prunecli.cli import main as cli_main
from prunecli.errors import PruneError
from prunecli.outputs import write_csv
from prunecli.records import write_run

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_run(root: Path, name: str, *, mtime: float | None = None, **fields) -> Path:
    """A finished run directory ``root/name``; ``run_id`` defaults to ``name``."""
    run_dir = root / name
    record = {
        "run_id": name, "status": "completed", "model": "tiny", "method": "magnitude", "pattern": "unstructured",
        "sparsity_target": 0.5, "sparsity_actual": 0.5, "ppl": 20.0, "prefill_ms": 1.5, "prune_s": 0.1, "eval_s": 0.2,
        "error": "", "run_dir": str(run_dir), "timings": {"prune": 0.1},
    } | fields
    write_run(run_dir, record, [])
    if mtime is not None:
        os.utime(run_dir / "metrics.json", (mtime, mtime))
    return run_dir


def grid(root: Path) -> None:
    """3 methods x 2 sparsities with ppl = 10 * (method number) + 100 * sparsity, plus a dense run."""
    make_run(root, "dense", method="dense", sparsity_target=0.0, sparsity_actual=0.0, ppl=10.0)
    for number, method in enumerate(["magnitude", "sparsegpt", "wanda"], start=1):
        for sparsity in (0.5, 0.7):
            make_run(root, f"{method}-{sparsity}", method=method, sparsity_target=sparsity, ppl=10 * number + 100 * sparsity)


def test_stacks_many_runs_sorted_without_internal_columns(tmp_path):
    grid(tmp_path)
    frame = report.main([str(tmp_path)])
    assert len(frame) == 7
    assert list(frame["method"]) == ["dense", "magnitude", "magnitude", "sparsegpt", "sparsegpt", "wanda", "wanda"]
    written = pd.read_csv(tmp_path / "report.csv")
    assert list(written.columns) == list(frame.columns) and report.SOURCE not in written
    assert len(written) == 7 and "wanda" in (tmp_path / "report.md").read_text()


def test_failed_runs_are_listed_not_dropped(tmp_path, capsys):
    make_run(tmp_path, "ok")
    make_run(tmp_path, "bad", status="failed", ppl="", error="sparsity must be a number in [0, 1)")
    frame = report.main([str(tmp_path)])
    assert sorted(frame["status"]) == ["completed", "failed"]
    assert "1 failed run" in capsys.readouterr().out
    written = pd.read_csv(tmp_path / "report.csv")
    assert written.loc[written["status"] == "failed", "error"].item() == "sparsity must be a number in [0, 1)"


def test_dedupe_prefers_completed_then_newest(tmp_path, capsys):
    make_run(tmp_path, "a-old", run_id="a", ppl=11.0, mtime=1_000)
    make_run(tmp_path, "a-failed-newest", run_id="a", status="failed", ppl="", error="boom", mtime=3_000)
    make_run(tmp_path, "b-old", run_id="b", ppl=21.0, mtime=1_000)
    make_run(tmp_path, "b-new", run_id="b", ppl=22.0, mtime=2_000)
    frame = report.main([str(tmp_path)])
    assert sorted(frame["run_id"]) == ["a", "b"]
    assert (frame["status"] == "completed").all()
    assert dict(zip(frame["run_id"], frame["ppl"])) == {"a": 11.0, "b": 22.0}
    assert "dropped 0 skipped and 2 duplicate row(s)" in capsys.readouterr().out


def test_skipped_rows_are_never_shown(tmp_path, capsys):
    make_run(tmp_path, "done", run_id="x", ppl=5.0)
    make_run(tmp_path, "rerun", run_id="x", status="skipped", ppl="")
    make_run(tmp_path, "only-skipped", run_id="y", status="skipped", ppl="")
    frame = report.main([str(tmp_path)])
    assert list(frame["run_id"]) == ["x"] and list(frame["status"]) == ["completed"]
    out = capsys.readouterr().out
    assert "dropped 2 skipped and 0 duplicate row(s)" in out and "failed run" not in out


def test_where_string_numeric_and_and(tmp_path):
    grid(tmp_path)
    assert sorted(report.main([str(tmp_path)], where=["method=wanda"])["sparsity_target"]) == [0.5, 0.7]
    for value in ("0.5", ".5", "0.50", "5e-1"):
        assert sorted(report.main([str(tmp_path)], where=[f"sparsity_target={value}"])["method"]) == ["magnitude", "sparsegpt", "wanda"]
    both = report.main([str(tmp_path)], where=["method=wanda", "sparsity_target=0.7"])
    assert list(both["run_id"]) == ["wanda-0.7"]
    assert len(pd.read_csv(tmp_path / "report.csv")) == 1  # the report holds the selection
    assert list(report.main([str(tmp_path)], where=["pattern=unstructured", "method=dense"])["run_id"]) == ["dense"]
    assert report.main([str(tmp_path)], where=["method=nope"]).empty


def test_where_matches_empty_cells_and_rejects_bad_input(tmp_path):
    make_run(tmp_path, "ok")
    make_run(tmp_path, "bad", status="failed", ppl="", error="boom")
    assert list(report.main([str(tmp_path)], where=["error="])["run_id"]) == ["ok"]
    with pytest.raises(PruneError, match=r"--where: unknown column\(s\) colour \(available: run_id, status, model"):
        report.main([str(tmp_path)], where=["colour=red"])
    with pytest.raises(PruneError, match="--where expects KEY=VALUE"):
        report.main([str(tmp_path)], where=["method"])


def test_pivot_values_are_means_of_completed_runs(tmp_path, capsys):
    grid(tmp_path)
    make_run(tmp_path, "wanda-0.5-seed2", method="wanda", sparsity_target=0.5, ppl=90.0)  # shares a cell with wanda-0.5 (80)
    make_run(tmp_path, "wanda-failed", method="wanda", sparsity_target=0.7, status="failed", ppl=1e9, error="boom")
    report.main([str(tmp_path)], pivot="rows=method,cols=sparsity_target,values=ppl", fmt="csv")
    table = pd.read_csv(tmp_path / "pivot.csv").set_index("method")
    assert list(table.columns) == ["0.0", "0.5", "0.7"]
    assert table.loc["dense", "0.0"] == pytest.approx(10.0) and pd.isna(table.loc["dense", "0.5"])
    assert table.loc["magnitude", "0.5"] == pytest.approx(60.0)
    assert table.loc["sparsegpt", "0.7"] == pytest.approx(90.0)
    assert table.loc["wanda", "0.5"] == pytest.approx(85.0)  # mean of 80 and 90
    assert table.loc["wanda", "0.7"] == pytest.approx(100.0)  # the failed run is left out
    out = " ".join(capsys.readouterr().out.split())  # rich wraps long titles
    assert "1 pivot cell(s) hold several runs" in out and "mean ppl by method x sparsity_target" in out


def test_pivot_synonyms_and_several_columns(tmp_path):
    make_run(tmp_path, "u", pattern="unstructured", ppl=30.0)
    make_run(tmp_path, "s", pattern="2:4", ppl=40.0)
    make_run(tmp_path, "w", method="wanda", pattern="2:4", ppl=35.0)
    report.main([str(tmp_path)], pivot="index=model,columns=method+pattern,values=ppl", fmt="csv")
    table = pd.read_csv(tmp_path / "pivot.csv")
    assert table.to_dict("records") == [{"model": "tiny", "magnitude / 2:4": 40.0, "magnitude / unstructured": 30.0, "wanda / 2:4": 35.0}]
    report.main([str(tmp_path)], pivot="rows=method+pattern,values=ppl", fmt="csv")
    rows = pd.read_csv(tmp_path / "pivot.csv")
    assert list(rows.columns) == ["method", "pattern", "ppl"] and sorted(rows["ppl"]) == [30.0, 35.0, 40.0]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("rows=method,cols=nonsense,values=ppl", r"--pivot: unknown column\(s\) nonsense \(available: run_id, status, model, method"),
        ("rows=method,values=colour", r"--pivot: unknown column\(s\) colour \(available:"),
        ("rows=method,cols=sparsity_target", "needs rows=COL and one values=COL"),
        ("rows=method,colour=red,values=ppl", "--pivot expects rows="),
        ("rows=method,values=model", "values column 'model' is not numeric"),
    ],
)
def test_bad_pivot_errors_before_writing(tmp_path, spec, message):
    grid(tmp_path)
    with pytest.raises(PruneError, match=message):
        report.main([str(tmp_path)], pivot=spec)
    assert not (tmp_path / "report.csv").exists()


def test_markdown_latex_csv_files_hold_the_values(tmp_path):
    grid(tmp_path)
    spec = "rows=method,cols=sparsity_target,values=ppl"
    report.main([str(tmp_path)], pivot=spec, fmt="md")
    assert "| tiny | wanda | unstructured | 0.7 | 0.5 | 100 |  | 1.5 |" in (tmp_path / "report.md").read_text()
    pivot_md = (tmp_path / "pivot.md").read_text()
    assert pivot_md.startswith("| method | 0.0 | 0.5 | 0.7 |") and "| magnitude |  | 60 | 80 |" in pivot_md

    report.main([str(tmp_path)], pivot=spec, fmt="latex")
    tex = (tmp_path / "report.tex").read_text()
    assert tex.startswith(r"\begin{tabular}{lllrrrrrrr}")
    assert r"\toprule" in tex and r"\midrule" in tex and tex.rstrip().endswith(r"\end{tabular}")
    assert r"sparsity\_target" in tex and r"tiny & wanda & unstructured & 0.7 & 0.5 & 100 &  & 1.5" in tex
    pivot_tex = (tmp_path / "pivot.tex").read_text().splitlines()
    assert pivot_tex[0] == r"\begin{tabular}{lrrr}"
    assert r"method & 0.0 & 0.5 & 0.7 \\" in pivot_tex and r"sparsegpt &  & 70 & 90 \\" in pivot_tex

    for name in ("report.md", "report.tex", "pivot.md", "pivot.tex"):
        (tmp_path / name).unlink()
    report.main([str(tmp_path)], pivot=spec, fmt="csv")
    assert not any((tmp_path / name).exists() for name in ("report.md", "report.tex"))
    assert len(pd.read_csv(tmp_path / "report.csv")) == 7
    assert pd.read_csv(tmp_path / "pivot.csv").set_index("method").loc["wanda", "0.7"] == pytest.approx(100.0)


def test_latex_escapes_special_characters():
    frame = pd.DataFrame({"name_x": ["50% & $5 #1 {a}"], "value": [1.23456]})
    assert report.latex(frame).splitlines()[2:5] == [
        r"name\_x & value \\", r"\midrule", r"50\% \& \$5 \#1 \{a\} & 1.235 \\",
    ]


def write_latency(run_dir: Path, rows: list[tuple[str, str, float]]) -> None:
    records = [{"backend": backend, "phase": phase, "median_ms": median, "min_ms": median * 0.9, "p90_ms": median * 1.1}
               for backend, phase, median in rows]
    write_csv(run_dir / "latency.csv", records, ["backend", "phase", "median_ms", "min_ms", "p90_ms"])


def test_latency_is_stacked_with_run_columns(tmp_path, capsys):
    grid(tmp_path)
    write_latency(tmp_path / "dense", [("torch", "prefill", 4.0), ("torch", "decode", 1.0)])
    write_latency(tmp_path / "wanda-0.5", [("torch", "prefill", 3.0), ("sparse", "prefill", 2.0)])
    report.main([str(tmp_path)])
    latency = pd.read_csv(tmp_path / "latency.csv")
    assert list(latency.columns) == [*report.LATENCY_IDS, "backend", "phase", "median_ms", "min_ms", "p90_ms"]
    assert len(latency) == 4
    wanda = latency[latency["run_id"] == "wanda-0.5"]
    assert set(wanda["method"]) == {"wanda"} and set(wanda["sparsity_target"]) == {0.5}
    assert sorted(wanda["median_ms"]) == [2.0, 3.0]
    assert "stacked the latency of 2 run(s)" in capsys.readouterr().out
    report.main([str(tmp_path)], where=["method=dense"])
    assert set(pd.read_csv(tmp_path / "latency.csv")["run_id"]) == {"dense"}


def test_latency_of_a_single_run_directory_is_not_overwritten(tmp_path):
    run_dir = make_run(tmp_path, "one")
    write_latency(run_dir, [("torch", "prefill", 4.0)])
    original = (run_dir / "latency.csv").read_text()
    report.main([str(run_dir)])
    assert (run_dir / "latency.csv").read_text() == original
    assert list(pd.read_csv(run_dir / "report_latency.csv")["run_id"]) == ["one"]


def test_no_latency_files_no_latency_csv(tmp_path):
    grid(tmp_path)
    report.main([str(tmp_path)])
    assert not (tmp_path / "latency.csv").exists()


def test_plot_writes_figures_and_their_data(tmp_path):
    pytest.importorskip("matplotlib")
    grid(tmp_path)
    make_run(tmp_path, "failed", method="wanda", sparsity_target=0.9, status="failed", ppl="", error="boom")
    write_latency(tmp_path / "dense", [("torch", "prefill", 4.0), ("torch", "decode", 1.0)])
    write_latency(tmp_path / "wanda-0.5", [("torch", "prefill", 3.0), ("torch", "decode", 0.8)])
    report.main([str(tmp_path)], plot=True)
    plots = tmp_path / "plots"
    for name in ("ppl_vs_sparsity.png", "latency_by_backend.png"):
        assert (plots / name).read_bytes().startswith(PNG_SIGNATURE)
    ppl = pd.read_csv(plots / "ppl_vs_sparsity.csv")
    assert list(ppl.columns) == ["method", "pattern", "sparsity_target", "ppl"]
    assert len(ppl) == 7 and 0.9 not in set(ppl["sparsity_target"])  # completed runs only
    assert ppl.set_index(["method", "sparsity_target"]).loc[("sparsegpt", 0.7), "ppl"] == pytest.approx(90.0)
    latency = pd.read_csv(plots / "latency_by_backend.csv")
    assert list(latency.columns) == ["phase", "backend", "run", "median_ms", "min_ms", "p90_ms"] and len(latency) == 4
    assert latency.set_index(["phase", "run"]).loc[("decode", "wanda unstructured 0.5"), "median_ms"] == pytest.approx(0.8)


def test_a_weight_update_is_its_own_column_and_its_own_line_never_averaged_in(tmp_path):
    pytest.importorskip("matplotlib")
    make_run(tmp_path, "wanda", method="wanda", update="none", ppl=180.0)
    make_run(tmp_path, "wanda-admm", method="wanda", update="admm", ppl=90.0)
    report.main([str(tmp_path)], plot=True)
    assert "| tiny | wanda | unstructured | 0.5 | 0.5 | admm | 90 |" in (tmp_path / "report.md").read_text()
    ppl = pd.read_csv(tmp_path / "plots" / "ppl_vs_sparsity.csv")
    assert list(ppl.columns) == ["method", "pattern", "update", "sparsity_target", "ppl"]
    assert sorted(ppl["ppl"]) == [90.0, 180.0]  # two lines, not their mean


def test_runs_differing_only_in_the_eval_budget_are_two_groups_never_one_mean(tmp_path):
    pytest.importorskip("matplotlib")
    make_run(tmp_path, "short", max_eval_tokens=4096, eval_tokens=4096, ppl=447.9)
    make_run(tmp_path, "long", max_eval_tokens=16384, eval_tokens=16384, ppl=412.2)
    report.main([str(tmp_path)], plot=True)
    table = (tmp_path / "report.md").read_text()
    assert "| eval_tokens | max_eval_tokens |" in table.splitlines()[0] + "|"  # the differing settings are shown
    assert "| 447.9 |  | 1.5 | 0.1 | 0.2 | 4,096 | 4,096 |" in table and "| 412.2 |  | 1.5 | 0.1 | 0.2 | 16,384 | 16,384 |" in table
    ppl = pd.read_csv(tmp_path / "plots" / "ppl_vs_sparsity.csv")
    assert sorted(ppl["ppl"]) == [412.2, 447.9]  # two lines (keys: eval_tokens, max_eval_tokens), not 430.05
    assert {"eval_tokens", "max_eval_tokens"} <= set(ppl.columns)
    with pytest.raises(PruneError, match=r"--pivot would average runs with different eval_tokens \(16384, 4096\) in one cell"):
        report.main([str(tmp_path)], pivot="rows=method,values=ppl")
    report.main([str(tmp_path)], pivot="rows=method+max_eval_tokens+eval_tokens,values=ppl")  # separated: accepted
    assert "| magnitude | 4,096 | 4,096 | 447.9 |" in (tmp_path / "pivot.md").read_text()


def test_a_failed_runs_settings_never_hide_the_completed_runs_line(tmp_path):
    pytest.importorskip("matplotlib")
    make_run(tmp_path, "old", ppl=50.0)  # a record from before the settings columns: max_eval_tokens empty
    make_run(tmp_path, "bad", status="failed", ppl="", max_eval_tokens=16384, error="boom")
    report.main([str(tmp_path)], plot=True)
    assert list(pd.read_csv(tmp_path / "plots" / "ppl_vs_sparsity.csv")["ppl"]) == [50.0]


def test_plot_without_latency_draws_only_ppl(tmp_path):
    pytest.importorskip("matplotlib")
    grid(tmp_path)
    report.main([str(tmp_path)], plot=True)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["ppl_vs_sparsity.csv", "ppl_vs_sparsity.png"]


def test_plot_without_matplotlib_is_one_clear_error(tmp_path, monkeypatch):
    grid(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(PruneError, match=r"--plot needs matplotlib: pip install 'prunecli\[plot\]'"):
        report.main([str(tmp_path)], plot=True)
    assert not (tmp_path / "report.csv").exists()


def test_cli_report_options(tmp_path, capsys):
    grid(tmp_path)
    args = ["report", str(tmp_path), "--where", "sparsity_target=0.5", "--pivot", "rows=method,cols=pattern,values=ppl", "--format", "latex"]
    with pytest.raises(SystemExit) as exit_info:
        cli_main(args)
    assert exit_info.value.code == 0
    assert len(pd.read_csv(tmp_path / "report.csv")) == 3
    assert r"wanda & 80 \\" in (tmp_path / "pivot.tex").read_text()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["report", str(tmp_path), "--pivot", "rows=method,cols=nonsense,values=ppl"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith("prune: error: --pivot: unknown column(s) nonsense (available: run_id,")
