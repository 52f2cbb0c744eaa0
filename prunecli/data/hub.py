"""Standard pruning benchmarks through Hugging Face ``datasets`` (cached or online).

These follow the reference protocol of the Wanda / SparseGPT code: WikiText-2 and PTB are
joined with ``"\\n\\n"`` as one text; C4 uses the first validation shard of ``allenai/c4``.
They need the ``datasets`` package (``pip install 'prunecli[hub]'``) and the hub or a cache.
"""

from __future__ import annotations

from dataclasses import dataclass

from prunecli.data import SourceOptions, register_source
from prunecli.errors import PruneError

# source -> (dataset path, config name, text field)
HUB_DATASETS = {
    "wikitext2": ("wikitext", "wikitext-2-raw-v1", "text"),
    "ptb": ("ptb_text_only", "penn_treebank", "sentence"),
    "c4": ("allenai/c4", None, "text"),
}
# C4 is read from its first shard of each split, as the reference code does.
C4_SHARDS = {"train": "en/c4-train.00000-of-01024.json.gz", "validation": "en/c4-validation.00000-of-00008.json.gz"}


def load_hub_split(source: str, split: str) -> list[str]:
    try:
        import datasets
    except ImportError:
        raise PruneError(f"data source {source} needs the datasets package: pip install 'prunecli[hub]'") from None
    path, name, field = HUB_DATASETS[source]
    data_files = {split: C4_SHARDS[split]} if source == "c4" and split in C4_SHARDS else None
    try:
        rows = datasets.load_dataset(path, name, data_files=data_files, split=split)
    except Exception as err:  # datasets raises many types for offline / missing caches
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise PruneError(f"could not load {source} ({path}) from the hub or the local cache: {first}") from err
    return [str(text) for text in rows[field]]


@dataclass(frozen=True)
class HubSplitOptions(SourceOptions):
    split: str = "test"  # the dataset split (train | validation | test)


def hub_source(source: str):
    def load(options: HubSplitOptions) -> list[str]:
        documents = load_hub_split(source, options.split)
        # WikiText and PTB are one corpus split into lines: the reference joins them as one text.
        return documents if source == "c4" else ["\n\n".join(documents)]

    load.__doc__ = f"{source} through datasets.load_dataset{HUB_DATASETS[source][:2]}."
    return load


for _source in HUB_DATASETS:
    register_source(_source, HubSplitOptions)(hub_source(_source))
