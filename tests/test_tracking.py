"""Optional trackers: nothing needed by default, a clear install hint, params and metrics logged."""

import sys
import types
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prunecli.errors import PruneError
from prunecli.tracking import check_available, flat_params, parse_logger, track


def test_default_logger_needs_nothing(tmp_path):
    track(parse_logger(OmegaConf.create({"name": "none"})), OmegaConf.create({}), tmp_path, {"ppl": 1.0})


def test_missing_package_names_the_pip_command(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(PruneError, match="pip install mlflow"):
        check_available("mlflow")
    with pytest.raises(PruneError, match="unknown logger 'wandb'"):
        check_available("wandb")


def test_mlflow_gets_flat_params_and_numeric_metrics(monkeypatch, tmp_path):
    calls = {}
    fake = types.ModuleType("mlflow")
    fake.__spec__ = types.SimpleNamespace()
    fake.set_tracking_uri = lambda uri: calls.setdefault("uri", uri)
    fake.set_experiment = lambda name: calls.setdefault("experiment", name)
    fake.log_params = lambda params: calls.setdefault("params", params)
    fake.log_metrics = lambda metrics: calls.setdefault("metrics", metrics)
    fake.set_tags = lambda tags: calls.setdefault("tags", tags)

    class Run:
        def __init__(self, run_name):
            calls["run_name"] = run_name

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    fake.start_run = Run
    monkeypatch.setitem(sys.modules, "mlflow", fake)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake.__spec__ if name == "mlflow" else real(name, *a))
    cfg = OmegaConf.create({"method": {"name": "wanda"}, "sparsity": 0.5, "logger": {"name": "mlflow", "tracking_uri": "file:x", "experiment": "e"}})
    track(parse_logger(cfg.logger), cfg, Path(tmp_path / "run1"), {"ppl": 12.5, "status": "completed", "params_total": 10, "ok": True, "run_id": "abc"})
    assert calls["uri"] == "file:x" and calls["experiment"] == "e" and calls["run_name"] == "run1"
    assert calls["params"] == {"method.name": "wanda", "sparsity": "0.5", "logger.name": "mlflow", "logger.tracking_uri": "file:x",
                               "logger.experiment": "e"}
    assert calls["metrics"] == {"ppl": 12.5, "params_total": 10.0}  # numbers only: no status, no bool, no id
    assert calls["tags"] == {"run_id": "abc", "status": "completed", "run_dir": str(tmp_path / "run1")}


def test_tensorboard_writes_the_run_as_hparams_under_its_own_folder(monkeypatch, tmp_path):
    calls = {}

    class Writer:
        def __init__(self, log_dir):
            calls["log_dir"] = log_dir

        def add_hparams(self, params, metrics, run_name):
            calls["hparams"] = (params, metrics, run_name)

        def close(self):
            calls["closed"] = True

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    fake.__spec__ = types.SimpleNamespace()
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: fake.__spec__ if name == "tensorboard" else real(name, *a))
    cfg = OmegaConf.create({"method": {"name": "magnitude"}, "logger": {"name": "tensorboard", "log_dir": str(tmp_path / "tb")}})
    track(parse_logger(cfg.logger), cfg, tmp_path / "run7", {"ppl": 3.0, "status": "completed", "sparsity_actual": 0.5})
    assert calls["log_dir"] == str(tmp_path / "tb" / "run7") and calls["closed"]
    assert calls["hparams"] == ({"method.name": "magnitude", "logger.name": "tensorboard", "logger.log_dir": str(tmp_path / "tb")},
                                {"ppl": 3.0, "sparsity_actual": 0.5}, ".")


def test_flat_params_flattens_nested_config():
    assert flat_params(OmegaConf.create({"a": {"b": 1, "c": [1, 2]}, "d": "x"})) == {"a.b": "1", "a.c": "[1, 2]", "d": "x"}
