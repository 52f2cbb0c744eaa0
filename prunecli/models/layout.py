"""Where a transformer keeps its stack of blocks, per model family.

Layer-wise methods (Wanda, SparseGPT, OWL) walk the blocks one at a time. The path is
relative to ``model.base_model`` (``LlamaModel`` for ``LlamaForCausalLM``, ``BertModel``
for ``BertForSequenceClassification``). To support a new family, add its ``model_type``
and the dotted path of its block ``ModuleList`` to :data:`BLOCK_PATHS`.
"""

from __future__ import annotations

import torch
from torch import nn

from prunecli.errors import PruneError

BLOCK_PATHS = {
    "llama": "layers",
    "mistral": "layers",
    "qwen2": "layers",
    "qwen3": "layers",
    "gemma": "layers",
    "phi3": "layers",
    "gpt2": "h",
    "opt": "decoder.layers",
    "bert": "encoder.layer",
    "roberta": "encoder.layer",
}


def blocks_of(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """(full module name, ModuleList) of the model's transformer blocks."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in BLOCK_PATHS:
        raise PruneError(
            f"{type(model).__name__} (model_type {model_type!r}) has no known block layout; "
            f"add '{model_type}: <path to its block ModuleList>' to BLOCK_PATHS in prunecli/models/layout.py"
        )
    base = model.base_model
    blocks = base.get_submodule(BLOCK_PATHS[model_type])
    base_name = next(name for name, module in model.named_modules() if module is base)
    return ".".join(filter(None, [base_name, BLOCK_PATHS[model_type]])), blocks


FINAL_PATHS = {
    "llama": ["norm"],
    "mistral": ["norm"],
    "qwen2": ["norm"],
    "qwen3": ["norm"],
    "gemma": ["norm"],
    "phi3": ["norm"],
    "gpt2": ["ln_f"],
    "opt": ["decoder.final_layer_norm", "decoder.project_out"],  # either may be None (OPT-350m)
}


def final_modules(model: nn.Module) -> list[nn.Module]:
    """The modules a causal LM applies between its last block and its head (:data:`FINAL_PATHS`), in order."""
    model_type = getattr(model.config, "model_type", None)
    if model_type not in FINAL_PATHS:
        raise PruneError(f"{type(model).__name__} (model_type {model_type!r}) has no known final layers for block-wise scoring; "
                         f"add '{model_type}: [<modules between the last block and the head>]' to FINAL_PATHS in prunecli/models/layout.py")
    modules = []
    for path in FINAL_PATHS[model_type]:
        module = model.base_model
        for part in path.split("."):
            module = getattr(module, part, None)
        if module is not None:
            modules.append(module)
    return modules


def head_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The causal LM's logits from its last block's output: the final modules, then the head."""
    for module in final_modules(model):
        hidden = module(hidden)
    return model.get_output_embeddings()(hidden)
