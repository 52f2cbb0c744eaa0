"""Randomly initialised tiny models built from configs (tests and dry runs, no weights needed).

They share the packaged MiniLM WordPiece tokenizer, so their vocabulary is that tokenizer's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from prunecli.errors import PruneError
from prunecli.models import TextModelOptions, register_source
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


def require_arch(arch: str) -> None:
    if arch not in ARCHITECTURES:
        raise PruneError(f"unknown tiny model arch {arch!r} (choose from: {', '.join(ARCHITECTURES)})")


def build_tiny(arch: str, config: dict, seed: int = 0):
    """Instantiate ``arch`` with ``config`` and weights drawn under ``seed``."""
    import transformers

    require_arch(arch)
    config_name, model_name, task = ARCHITECTURES[arch]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, model_name)(getattr(transformers, config_name)(**config))
    return model, task


@dataclass(frozen=True)
class TinyModelOptions(TextModelOptions):
    arch: str = "llama"  # an ARCHITECTURES key
    seed: int = 0  # the random init
    config: dict = field(default_factory=dict)  # the transformers config's fields (vocab_size: the tiny tokenizer's)

    def check(self, prefix: str) -> None:
        super().check(prefix)
        require_arch(self.arch)


def tiny_checkpoint(options: TinyModelOptions, scratch: Path) -> tuple[Path, str]:
    """``offload=disk``: the tiny model saved (``save_pretrained``) into ``scratch/tiny_checkpoint``, to be read from there."""
    model, tokenizer, task = load_tiny(options)
    folder = scratch / "tiny_checkpoint"
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder, task


@register_source("tiny", TinyModelOptions, checkpoint=tiny_checkpoint)
def load_tiny(options: TinyModelOptions):
    tokenizer = tiny_tokenizer()
    config = dict(options.config)
    config["vocab_size"] = len(tokenizer)
    model, task = build_tiny(options.arch, config, options.seed)
    return model, tokenizer, task
