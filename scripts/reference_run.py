"""Run the authors' Wanda / SparseGPT code on the shared protocol, to time it beside prunecli (#19).

The code is not shipped: ``--code`` is a checkout of locuslab/wanda (8e8fc87; its SparseGPT is
IST-DASLab/sparsegpt's). Its ``lib.prune.prune_wanda`` / ``prune_sparsegpt`` run unchanged; this
script supplies only what its ``main.py`` and the hub would have (as the protocol's reference
figures were taken, ``../shared/protocol/README.md``):

- the data: ``lib.data.load_dataset`` returns the protocol's calibration documents (the packaged
  ``news_sample``, or ``--calibration`` jsonl) in place of C4's train split, so the authors' own
  sampling rule draws the windows; their validation split is one short text (it is unused here);
- the model: SmolLM2-135M-Instruct, prunecli's packaged fp32 folder, ``from_pretrained`` on the
  CPU in fp32, ``model.seqlen`` and an empty ``hf_device_map`` (``main.get_llm`` sets both);
- transformers 5.x plumbing: their loop calls a block with ``attention_mask`` and ``position_ids``
  only; a pre-hook on each block adds the rotary ``position_embeddings`` for those positions
  (computed once per ``position_ids``, as the model's own forward does once per call);
- a CPU-only torch: ``torch.cuda.synchronize`` (called at the end of each ``fasterprune``) is a no-op.

``prune_s`` is the wall time of the authors' prune call: calibration data (draw + tokenise), the
embeddings, every block's two passes and the pruning -- what prunecli's ``prune_s`` spans too.

    python scripts/reference_run.py --code ~/wanda --method wanda --out row.json
    python scripts/reference_run.py --code ~/wanda --method sparsegpt --ppl     # + perplexity on the protocol
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from argparse import Namespace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


class Documents:
    """The protocol's documents in the two shapes the authors' ``get_c4`` reads a split in:
    ``split[i]['text']`` and ``split[:k]['text']``."""

    def __init__(self, texts: list[str]):
        self.texts = texts

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index: int | slice) -> dict:
        return {"text": self.texts[index]}


def calibration_texts(path: Path | None) -> list[str]:
    if path is None:
        from prunecli.data.corpora import news_documents
        return list(news_documents())
    from prunecli.data.files import read_jsonl
    return read_jsonl(path, "text")


def add_position_embeddings(model: torch.nn.Module) -> None:
    """A pre-hook on each decoder block that passes ``position_embeddings`` for its ``position_ids``."""
    cache: dict = {}

    def hook(module, args, kwargs):
        if kwargs.get("position_embeddings") is None:
            positions = kwargs["position_ids"]
            key = (tuple(positions.shape), positions.device)
            if key not in cache:
                cache[key] = model.model.rotary_emb(args[0], position_ids=positions)
            kwargs["position_embeddings"] = cache[key]
        return args, kwargs

    for block in model.model.layers:
        block.register_forward_pre_hook(hook, with_kwargs=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--code", type=Path, required=True, help="a checkout of locuslab/wanda")
    parser.add_argument("--method", choices=["wanda", "sparsegpt"], default="wanda")
    parser.add_argument("--sparsity", type=float, default=0.5)
    parser.add_argument("--pattern", default="unstructured", help="unstructured or N:M")
    parser.add_argument("--nsamples", type=int, default=64)
    parser.add_argument("--seqlen", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration", type=Path, help="the protocol's calib_news.jsonl (default: the packaged news_sample)")
    parser.add_argument("--ppl", action="store_true", help="also score the first 64 x seqlen tokens of the packaged wiki_sample")
    parser.add_argument("--out", type=Path, help="write the result row here (JSON)")
    args = parser.parse_args()
    if not (args.code / "lib" / "prune.py").is_file():
        raise SystemExit(f"error: {args.code} is not a checkout of locuslab/wanda (no lib/prune.py)")
    began = time.perf_counter()
    sys.path.insert(0, str(args.code.resolve()))
    import lib.data
    import lib.prune
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from prunecli.models.packaged import smollm2_folder

    from prunecli.errors import PruneError
    try:
        texts = calibration_texts(args.calibration)
    except (PruneError, OSError) as err:
        raise SystemExit(f"error: {err}") from None
    lib.data.load_dataset = lambda *a, split, **k: Documents(texts if split == "train" else texts[:1])
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None
    folder = smollm2_folder()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    model.seqlen, model.hf_device_map = args.seqlen, {}
    add_position_embeddings(model)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    prune_n, prune_m = (0, 0) if args.pattern == "unstructured" else map(int, args.pattern.split(":"))
    prune = {"wanda": lib.prune.prune_wanda, "sparsegpt": lib.prune.prune_sparsegpt}[args.method]
    options = Namespace(nsamples=args.nsamples, seed=args.seed, sparsity_ratio=args.sparsity, use_variant=False)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # a line per layer
        prune(options, model, tokenizer, torch.device("cpu"), prune_n=prune_n, prune_m=prune_m)
    prune_s = time.perf_counter() - start
    weights = [m.weight for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    row = {"method": args.method, "pattern": args.pattern, "sparsity_target": args.sparsity, "prune_s": round(prune_s, 2),
           "sparsity": sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights),
           "threads": torch.get_num_threads(), "code": str(args.code)}
    if args.ppl:
        from prunecli.data import eval_windows
        from prunecli.data.corpora import wiki_documents
        from prunecli.evaluate.perplexity import perplexity
        windows = eval_windows(tokenizer, list(wiki_documents()), args.seqlen, 64 * args.seqlen)
        row["ppl"] = perplexity(model, windows, progress=False)["ppl"]
    row["process_s"] = round(time.perf_counter() - began, 2)
    print(json.dumps(row))
    if args.out:
        args.out.write_text(json.dumps(row))


if __name__ == "__main__":
    main()
