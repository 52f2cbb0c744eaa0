"""Randomly initialised tiny models built from configs (tests and dry runs, no weights needed).

They share the packaged MiniLM WordPiece tokenizer, so their vocabulary is that tokenizer's.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import OmegaConf

from prunecli.errors import PruneError
from prunecli.models import MODEL_SOURCES
from prunecli.models.packaged import minilm_folder

# arch -> (transformers config class, model class, task)
ARCHITECTURES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", "causal_lm"),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "causal_lm"),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", "causal_lm"),
    "opt": ("OPTConfig", "OPTForCausalLM", "causal_lm"),
    "bert": ("BertConfig", "BertModel", "encoder"),
    "bert_classifier": ("BertConfig", "BertForSequenceClassification", "sequence_classifier"),
}


def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_folder()))


def build_tiny(arch: str, config: dict, seed: int = 0):
    """Instantiate ``arch`` with ``config`` and weights drawn under ``seed``."""
    import transformers

    if arch not in ARCHITECTURES:
        raise PruneError(f"unknown tiny model arch {arch!r} (choose from: {', '.join(ARCHITECTURES)})")
    config_name, model_name, task = ARCHITECTURES[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_name)(getattr(transformers, config_name)(**config))
    return model, task


@MODEL_SOURCES.register("tiny")
def load_tiny(cfg: Any):
    tokenizer = tiny_tokenizer()
    config = OmegaConf.to_container(cfg.config, resolve=True)
    config["vocab_size"] = len(tokenizer)
    model, task = build_tiny(cfg.arch, config, int(cfg.get("seed", 0)))
    return model, tokenizer, task
