"""``model.source=hf``: any Hugging Face ``name_or_path`` (hub id or local folder)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prunecli.errors import PruneError
from prunecli.models import TextModelOptions, register_source


@dataclass(frozen=True)
class HubModelOptions(TextModelOptions):
    name_or_path: str = ""  # a hub id or a folder written by save_pretrained
    revision: str | None = None
    task: Literal["auto", "causal_lm", "encoder", "sequence_classifier"] = "auto"
    num_labels: int | None = None  # a sequence classifier's head size (null: the checkpoint's)


def task_of(config: Any, requested: str) -> str:
    """``causal_lm`` when the architecture has a causal-LM head class, else ``encoder``."""
    from transformers import MODEL_FOR_CAUSAL_LM_MAPPING

    if requested != "auto":
        return requested
    if any(str(arch).endswith("ForSequenceClassification") for arch in getattr(config, "architectures", None) or []):
        return "sequence_classifier"  # e.g. a saved fine-tuned classifier
    return "causal_lm" if type(config) in MODEL_FOR_CAUSAL_LM_MAPPING else "encoder"


def from_pretrained(name_or_path: str, task: str = "auto", trust_remote_code: bool = False, revision: str | None = None,
                    num_labels: int | None = None):
    """Load config, model and tokenizer with the transformers Auto classes."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from prunecli.structured.loading import has_structure, load_structured

    kwargs = {"trust_remote_code": bool(trust_remote_code), "revision": revision}
    try:
        config = AutoConfig.from_pretrained(name_or_path, **kwargs, **({"num_labels": int(num_labels)} if num_labels else {}))
        task = task_of(config, task)
        auto = {"causal_lm": AutoModelForCausalLM, "sequence_classifier": AutoModelForSequenceClassification}.get(task, AutoModel)
        if has_structure(config):  # per-layer shapes from structured pruning
            model = load_structured(name_or_path, config, auto, kwargs["trust_remote_code"])
        else:
            model = auto.from_pretrained(name_or_path, config=config, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        hint = "" if Path(str(name_or_path)).expanduser().is_dir() else " (no local folder, cache or hub access?)"
        raise PruneError(f"cannot load model {name_or_path!r}{hint}: {first_line}") from err
    return model, tokenizer, task


def looks_like_path(name_or_path: str) -> bool:
    return name_or_path.startswith((".", "/", "~")) or Path(name_or_path).suffix != "" or name_or_path.count("/") > 1


def checked_name(options: HubModelOptions) -> str:
    """``model.name_or_path`` as given (a hub id) or as an existing local folder."""
    name = options.name_or_path
    if not name:
        raise PruneError("model=hf needs model.name_or_path=<hub id or local folder>")
    name = str(name)
    if looks_like_path(name) and not Path(name).expanduser().exists():
        raise PruneError(f"model path {name!r} does not exist")
    return str(Path(name).expanduser()) if Path(name).expanduser().exists() else name


PROVENANCE_KEY = "prunecli_provenance"  # config.json of a model prunecli saved: what produced it (method, pattern, sparsity, run id)


def provenance_of(name_or_path: str) -> dict | None:
    """What pruned the model in local folder ``name_or_path`` (its config's :data:`PROVENANCE_KEY`), or None."""
    config = Path(str(name_or_path)).expanduser() / "config.json"
    try:
        found = json.loads(config.read_text()).get(PROVENANCE_KEY)
    except (OSError, ValueError, AttributeError):
        return None
    return found if isinstance(found, dict) else None


def short_name(name_or_path: str) -> str:
    """A hub id as it is; a local folder by its own name -- never the whole path."""
    if not looks_like_path(str(name_or_path)):
        return str(name_or_path)
    return Path(str(name_or_path)).expanduser().resolve().name


def hf_checkpoint(options: HubModelOptions, scratch: Path) -> tuple[Path, str]:
    """``offload=disk``: the local folder, or the hub snapshot's (weights, config, tokenizer files only)."""
    from transformers import AutoConfig

    name = checked_name(options)
    if Path(name).is_dir():
        folder = Path(name)
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(name, revision=options.revision, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
        except Exception as err:  # no hub access and nothing cached
            raise PruneError(f"cannot fetch {name!r} for model.offload=disk (no local folder, cache or hub access?): {type(err).__name__}") from None
    config = AutoConfig.from_pretrained(folder, trust_remote_code=options.trust_remote_code)
    from prunecli.structured.loading import has_structure

    if has_structure(config):
        raise PruneError(f"{name} was shrunk by structured pruning (per-layer shapes): model.offload=disk builds uniform blocks; use model.offload=cpu")
    return folder, task_of(config, options.task)


@register_source("hf", HubModelOptions, checkpoint=hf_checkpoint)
def load_hf(options: HubModelOptions):
    """A hub id (``gpt2``, ``HuggingFaceTB/SmolLM2-135M``) or a folder written by ``save_pretrained``."""
    return from_pretrained(checked_name(options), options.task, options.trust_remote_code, options.revision, options.num_labels)
