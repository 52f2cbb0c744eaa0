"""Calibration sampling (the reference rule), evaluation windows, text_file sources."""

import json
import random

import pytest
from omegaconf import OmegaConf

from prunecli.data import calibration_windows, eval_windows, load_documents
from prunecli.errors import PruneError


class CharTokenizer:
    """One token per character: makes window arithmetic easy to check by hand."""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}


def reference_sampling(documents, nsamples, seqlen, seed):
    """The reference code's loop, written out directly."""
    random.seed(seed)
    out = []
    for _ in range(nsamples):
        while True:
            i = random.randint(0, len(documents) - 1)
            ids = [ord(c) for c in documents[i]]
            if len(ids) > seqlen:
                break
        j = random.randint(0, len(ids) - seqlen - 1)
        out.append(ids[j : j + seqlen])
    return out


def test_calibration_windows_follow_the_reference_rule():
    documents = ["short", "a" * 3 + "b" * 40, "".join(chr(65 + i % 26) for i in range(100)), "tiny", "x" * 17]
    windows = calibration_windows(CharTokenizer(), documents, nsamples=25, seqlen=16, seed=3)
    assert windows.tolist() == reference_sampling(documents, 25, 16, 3)


def test_calibration_rejects_text_too_short_and_zero_samples():
    with pytest.raises(PruneError, match="too short"):
        calibration_windows(CharTokenizer(), ["abc", "defg"], 2, 16, 0)
    with pytest.raises(PruneError, match="nsamples"):
        calibration_windows(CharTokenizer(), ["x" * 100], 0, 16, 0)


def test_eval_windows_are_non_overlapping_and_joined_with_blank_lines():
    windows = eval_windows(CharTokenizer(), ["abcdef", "ghij"], seqlen=4, max_tokens=None)
    assert ["".join(map(chr, w)) for w in windows.tolist()] == ["abcd", "ef\n\n", "ghij"]
    limited = eval_windows(CharTokenizer(), ["abcdef", "ghij"], seqlen=4, max_tokens=9)
    assert limited.shape == (2, 4)
    with pytest.raises(PruneError, match="shorter than one window"):
        eval_windows(CharTokenizer(), ["abc"], seqlen=4, max_tokens=None)


def test_text_file_reads_txt_and_jsonl(tmp_path):
    txt = tmp_path / "a.txt"
    txt.write_text("one document\n\nwith paragraphs", encoding="utf-8")
    assert load_documents(OmegaConf.create({"source": "text_file", "path": str(txt)})) == ["one document\n\nwith paragraphs"]
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("\n".join(json.dumps({"body": t}) for t in ["first", "second"]) + "\n", encoding="utf-8")
    assert load_documents(OmegaConf.create({"source": "text_file", "path": str(jsonl), "field": "body"})) == ["first", "second"]
    with pytest.raises(PruneError, match="no 'text' field"):
        load_documents(OmegaConf.create({"source": "text_file", "path": str(jsonl), "field": "text"}))
    with pytest.raises(PruneError, match="does not exist"):
        load_documents(OmegaConf.create({"source": "text_file", "path": str(tmp_path / "missing.txt")}))
    with pytest.raises(PruneError, match="unknown data source"):
        load_documents(OmegaConf.create({"source": "nope"}))
