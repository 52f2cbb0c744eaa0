"""A Hugging Face model folder with SRC's config and tokenizer but random weights.

Latency depends on the shapes only, so a GPU benchmark needs no checkpoint: copy SRC's
``config.json`` and tokenizer files (a few MB; SmolLM2's converted folder is
``~/.cache/prunecli/smollm2-135m-instruct-fp32`` after the first ``prune run``) to the GPU machine, then

    python scripts/random_weights.py SRC DST [--dtype fp16]
    prune run model=hf model.name_or_path=DST model.dtype=fp16 model.device=cuda eval=none ...

Perplexities of such a model mean nothing; its timings are those of the real one.
``--shape`` gives the config the shapes of a published model (SRC's tokenizer kept; token ids
beyond its vocabulary are simply never used): ``python scripts/random_weights.py SRC DST
--shape llama-3.2-3b --dtype fp32`` (``experiments/scaling/``, ``scripts/gpu_offload.sh``).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
# config fields of published Llama-family models, for random models of their size
SHAPES = {
    "smollm2-135m": dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                         vocab_size=49152, tie_word_embeddings=True),
    "smollm2-360m": dict(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15, num_key_value_heads=5,
                         vocab_size=49152, tie_word_embeddings=True),
    "tinyllama-1.1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                           vocab_size=32000, tie_word_embeddings=False),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24, num_key_value_heads=8,
                         head_dim=128, vocab_size=128256, tie_word_embeddings=True),
    "llama-2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       head_dim=128, vocab_size=32000, tie_word_embeddings=False),
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "generation_config.json", "chat_template.jinja")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="folder with config.json and the tokenizer files")
    parser.add_argument("dst", type=Path, help="folder to write (save_pretrained, safetensors)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", choices=SHAPES, help="the config fields of this published model over SRC's")
    args = parser.parse_args()
    if not (args.src / "config.json").is_file():
        parser.error(f"{args.src} has no config.json")
    torch.manual_seed(args.seed)
    config = AutoConfig.from_pretrained(args.src, **SHAPES.get(args.shape, {}))
    # SRC's tokenizer may have more ids than the shape's vocabulary (SmolLM2's 49,152 vs Llama-2's 32,000):
    # the embeddings grow to hold them all, or any real text would index past the table
    config.vocab_size = max(config.vocab_size, AutoConfig.from_pretrained(args.src).vocab_size)
    torch.set_default_dtype(DTYPES[args.dtype])  # initialised in the target dtype: no fp32 copy of a 7B model first
    model = AutoModelForCausalLM.from_config(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(args.dst, max_shard_size="2GB")
    for name in TOKENIZER_FILES:
        if (args.src / name).is_file():
            shutil.copy(args.src / name, args.dst / name)
    print(f"wrote {sum(p.numel() for p in model.parameters()):,} random {args.dtype} parameters to {args.dst}")


if __name__ == "__main__":
    main()
