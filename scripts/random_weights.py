"""A Hugging Face model folder with SRC's config and tokenizer but random weights.

Latency depends on the shapes only, so a GPU benchmark needs no checkpoint: copy SRC's
``config.json`` and tokenizer files (a few MB; SmolLM2's converted folder is
``~/.cache/prunecli/smollm2-135m-instruct-fp32`` after the first ``prune run``) to the GPU machine, then

    python scripts/random_weights.py SRC DST [--dtype fp16]
    prune run model=hf model.name_or_path=DST model.dtype=fp16 model.device=cuda eval=none ...

Perplexities of such a model mean nothing; its timings are those of the real one.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
                   "generation_config.json", "chat_template.jinja")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="folder with config.json and the tokenizer files")
    parser.add_argument("dst", type=Path, help="folder to write (save_pretrained, safetensors)")
    parser.add_argument("--dtype", choices=DTYPES, default="fp16")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if not (args.src / "config.json").is_file():
        parser.error(f"{args.src} has no config.json")
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.src)).to(DTYPES[args.dtype])
    model.save_pretrained(args.dst)
    for name in TOKENIZER_FILES:
        if (args.src / name).is_file():
            shutil.copy(args.src / name, args.dst / name)
    print(f"wrote {sum(p.numel() for p in model.parameters()):,} random {args.dtype} parameters to {args.dst}")


if __name__ == "__main__":
    main()
