"""Typed options (:mod:`prunecli.options`) and the method descriptor: one place states each
option's type and default, every bad key or value gets one line naming it, and a new method is
one module plus one YAML (the toy method below, through the CLI)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import textwrap
from typing import Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from omegaconf import OmegaConf

from prunecli.errors import PruneError
from prunecli.methods import METHODS, MethodOptions
from prunecli.models.cnns import ARCHITECTURES as CNN_ARCHITECTURES
from prunecli.options import Options, parse
from tests.conftest import REPO, composition_error, run_prune


@dataclasses.dataclass(frozen=True)
class Sample(Options):
    count: int = 1
    rate: float = 0.5
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    limit: int | None = None
    items: list[int] = dataclasses.field(default_factory=list)


def test_parse_fills_defaults_and_keeps_given_values():
    assert parse(Sample, {}, "x") == Sample()
    assert parse(Sample, OmegaConf.create({"count": 3, "rate": 1, "limit": None, "items": [1, 2]}), "x") == Sample(count=3, rate=1, items=[1, 2])


@pytest.mark.parametrize("node, message", [
    ({"cuont": 2}, "unknown key x.cuont (did you mean x.count?)"),
    ({"zzz": 2}, "unknown key x.zzz (its keys: name, count, rate, flag, mode, limit, items)"),
    ({"count": 1.5}, "x.count must be an integer (got 1.5)"),
    ({"count": True}, "x.count must be an integer (got True)"),
    ({"rate": "fast"}, "x.rate must be a number (got 'fast')"),
    ({"flag": 1}, "x.flag must be true or false (got 1)"),
    ({"mode": "c"}, "unknown x.mode 'c' (choose from: a, b)"),
    ({"limit": "all"}, "x.limit must be an integer or null (got 'all')"),
    ({"items": [1, "2"]}, "x.items must be a list of integers (got [1, '2'])"),
])
def test_bad_keys_and_values_are_one_line_naming_the_key(node, message):
    with pytest.raises(PruneError) as error:
        parse(Sample, node, "x")
    assert str(error.value) == message


@given(st.one_of(st.integers(), st.floats(allow_nan=False), st.booleans(), st.text(max_size=3), st.none()))
def test_an_int_field_takes_exactly_the_non_bool_integers(value):
    if isinstance(value, int) and not isinstance(value, bool):
        assert parse(Sample, {"count": value}, "x").count == value
    else:
        with pytest.raises(PruneError, match="x.count must be an integer"):
            parse(Sample, {"count": value}, "x")


METHOD_FILES = sorted((REPO / "configs" / "method").glob("*.yaml"))


@pytest.mark.parametrize("path", METHOD_FILES, ids=lambda p: p.stem)
def test_yaml_defaults_match_the_options(path):
    """Each method YAML lists exactly its descriptor's option fields, with the fields' defaults:
    the YAML is what users read and override, the dataclass what the code gets; they cannot drift."""
    node = OmegaConf.to_container(OmegaConf.load(path))
    method = METHODS.get(node["name"])
    assert method.parse(node) == method.options(name=node["name"])
    assert set(node) == {f.name for f in dataclasses.fields(method.options)}


def test_every_analysis_yaml_matches_its_options():
    from prunecli.analysis import ANALYSES

    for name in ANALYSES.names():
        node = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "analysis" / f"{name}.yaml"))
        analysis = ANALYSES.get(name)
        assert analysis.parse(node, (analysis.methods or ("dense",))[0]) == analysis.options(name=name)
        assert set(node) == {f.name for f in dataclasses.fields(analysis.options)}


def assert_yaml_is_its_options(group: str, name: str, options: type[Options]) -> None:
    """``configs/<group>/<name>.yaml`` parses to ``options``' defaults and lists exactly its fields."""
    node = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / group / f"{name}.yaml"))
    assert parse(options, node, group) == options(name=name)
    assert set(node) == {f.name for f in dataclasses.fields(options)}


def test_every_schedule_yaml_matches_its_options():
    from prunecli.schedules import SCHEDULES

    for name in SCHEDULES.names():
        assert_yaml_is_its_options("schedule", name, SCHEDULES.get(name).options)


def test_every_eval_yaml_matches_its_evaluators_options():
    from prunecli.evaluate import EVALUATORS, parse_eval

    for name in EVALUATORS.names():
        node = OmegaConf.to_container(OmegaConf.load(REPO / "configs" / "eval" / f"{name}.yaml"))
        assert set(node) == {"baseline", name}
        assert parse_eval(node).evaluators == {name: EVALUATORS.get(name).options()}
        assert set(node[name]) == {f.name for f in dataclasses.fields(EVALUATORS.get(name).options)} - {"name"}


def test_data_and_eval_nodes_are_typed_at_composition():
    assert composition_error("data.seqlen=abc") == "data.seqlen must be an integer (got 'abc')"
    assert composition_error("data.seed=1.5") == "data.seed must be an integer (got 1.5)"
    assert composition_error("+data.nsample=8") == "unknown key data.nsample (did you mean data.nsamples?)"
    assert composition_error("data/calibration=text_file") == "data.calibration.path must be set: data.calibration.path=..."
    assert composition_error("data/calibration=text_file", "data.calibration.path=null") == "data source text_file needs a path: data.calibration.path=FILE"
    assert composition_error("data/eval=wikitext2", "+data.eval.splt=test") == "unknown key data.eval.splt (did you mean data.eval.split?)"
    assert composition_error("eval.perplexity.batch_size=0") == "eval.perplexity.batch_size must be a positive integer (got 0)"
    assert composition_error("+eval.perplexity.batchsize=2") == "unknown key eval.perplexity.batchsize (did you mean eval.perplexity.batch_size?)"
    assert composition_error("eval.baseline=maybe") == "eval.baseline must be true or false (got 'maybe')"
    assert composition_error("+eval.accuracyy={}") == "unknown key eval.accuracyy (its keys: baseline, accuracy, perplexity, zeroshot)"


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "configs" / "model").glob("*.yaml")))
def test_every_model_yaml_parses_into_its_sources_typed_options(name):
    from hydra import compose, initialize_config_dir

    from prunecli.models import MODEL_SOURCES
    from prunecli.pipeline import validate

    extra = ["model.name_or_path=gpt2"] if name == "hf" else []
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=[f"model={name}", "eval=none", "method=dense", *extra])
    options = validate(cfg).model
    assert type(options) is MODEL_SOURCES.get(cfg.model.source).options and options.name == cfg.model.name
    assert {f.name for f in dataclasses.fields(options)} >= set(cfg.model)  # every key a typed field


def test_model_node_errors_are_one_line_at_composition():
    assert composition_error("model=hf") == "model.name_or_path must be set: model.name_or_path=..."
    assert composition_error("model=tiny_llama", "model.seed=abc") == "model.seed must be an integer (got 'abc')"
    assert composition_error("model=tiny_llama", "+model.sed=1") == "unknown key model.sed (did you mean model.seed?)"
    assert composition_error("model.dtype=fp8") == "unknown model.dtype 'fp8' (choose from: fp32, fp16, bf16)"
    assert composition_error("model=small_cnn", "model.arch=alexnet", "eval=accuracy") == \
        f"unknown built-in CNN arch 'alexnet' (choose from: {', '.join(CNN_ARCHITECTURES)})"


def test_every_logger_yaml_matches_its_options_and_bad_keys_are_refused():
    from prunecli.tracking import TRACKERS

    for name in TRACKERS.names():
        assert_yaml_is_its_options("logger", name, TRACKERS.get(name).options)
    assert composition_error("logger=tensorboard", "+logger.logdir=x") == "unknown key logger.logdir (did you mean logger.log_dir?)"


@pytest.mark.parametrize("preset", ["structured", "sparsity_paradox", "method_comparison"])
def test_a_presets_timing_settings_do_not_stop_benchmark_none(preset):
    from hydra import compose, initialize_config_dir

    from prunecli.pipeline import validate

    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("run", overrides=[f"+experiment={preset}", "benchmark=none"])
    assert "seqlen" in cfg.benchmark and validate(cfg).benchmark.name == "none"


def test_every_update_yaml_matches_its_options():
    from prunecli.methods.update import UPDATES

    assert UPDATES.names() == ["admm"]
    for name in UPDATES.names():
        assert_yaml_is_its_options("update", name, UPDATES.get(name).options)


def test_every_registered_method_has_a_config_and_typed_options():
    for name in METHODS.names():
        method = METHODS.get(name)
        assert (REPO / "configs" / "method" / f"{name}.yaml").is_file() and method.name == name
        assert issubclass(method.options, MethodOptions) and method.effect in ("nothing", "zeros", "shapes")


@pytest.mark.parametrize("override, message", [
    ("method.percdamp=-1", "method.percdamp must be a number >= 0 (got -1)"),
    ("method.blocksize=0", "method.blocksize must be a positive integer (got 0)"),
    ("method.calibration_batch_size=two", "method.calibration_batch_size must be an integer (got 'two')"),
])
def test_cli_refuses_a_bad_option_value_with_one_line_and_no_run_dir(tmp_path, override, message):
    result = run_prune("run", "model=tiny_llama", "method=sparsegpt", override, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"prune: error: {message}"
    assert not list((tmp_path / "outputs").glob("*/*"))


TOY_METHOD = '''
"""Toy method: zero the first floor(sparsity * in) input columns of every layer (offset: start later)."""
from dataclasses import dataclass

from prunecli.methods import Method, MethodOptions, register
from prunecli.methods.masks import prune_count
from prunecli.methods.targets import weight_matrix


@dataclass(frozen=True)
class ColumnsOptions(MethodOptions):
    offset: int = 0


def first_columns(ctx):
    for module in ctx.layers.values():
        weight = weight_matrix(module)
        start = ctx.options.offset
        weight[:, start:start + prune_count(weight.shape[1], ctx.sparsity)] = 0
    ctx.stats["toy_offset"] = ctx.options.offset


register(Method("first_columns", first_columns, ColumnsOptions))
'''


def test_a_new_method_is_one_module_plus_one_yaml_through_the_cli(tmp_path):
    """CONTRIBUTING.md's walk-through: the module registers a descriptor, the YAML names it; the
    CLI then composes, type-checks and runs it (here from a copy of the config tree)."""
    configs = tmp_path / "configs"
    shutil.copytree(REPO / "configs", configs)
    (configs / "method" / "first_columns.yaml").write_text("name: first_columns\noffset: 0\n")
    (tmp_path / "toy_method.py").write_text(TOY_METHOD)
    launcher = textwrap.dedent(f"""
        import sys, pathlib
        sys.path.insert(0, {str(tmp_path)!r})
        import prunecli.config
        prunecli.config.config_dir = lambda: pathlib.Path({str(configs)!r})
        import toy_method
        from prunecli.cli import main
        main()
    """)
    common = ["run", "model=tiny_llama", "method=first_columns", "sparsity=0.25", "benchmark=none", "eval=none"]

    def prune(*args):
        return subprocess.run([sys.executable, "-c", launcher, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600)

    done = prune(*common, "method.offset=4", "hydra.run.dir=outputs/toy")
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = json.loads((tmp_path / "outputs" / "toy" / "metrics.json").read_text())
    assert metrics["method"] == "first_columns" and metrics["toy_offset"] == 4
    assert metrics["sparsity_actual"] == pytest.approx(0.25, abs=0.01)
    bad = prune(*common, "method.offset=four")
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1] == "prune: error: method.offset must be an integer (got 'four')"
