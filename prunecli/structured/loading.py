"""Load a saved model whose layers have per-layer shapes (``config.prunecli_structure``).

``from_pretrained`` cannot build such a model (the config states one shape per key), so:
build the model from its config, reshape it (:func:`~prunecli.structured.remove.restore_structure`),
then load the saved safetensors state dict (single file or sharded). Tied weights (an
``lm_head`` sharing the embedding) are not in the file and are filled through the tie.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from prunecli.errors import PruneError
from prunecli.structured.remove import STRUCTURE_KEY, restore_structure


def has_structure(config: Any) -> bool:
    return bool(getattr(config, STRUCTURE_KEY, None))


def read_state_dict(folder: Path) -> dict:
    from safetensors.torch import load_file

    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.exists():
        return load_file(str(single))
    if index.exists():
        state: dict = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(load_file(str(folder / shard)))
        return state
    raise PruneError(f"{folder} has per-layer shapes ({STRUCTURE_KEY}) but no model.safetensors to load them from")


def load_structured(name_or_path: str, config: Any, auto: Any, trust_remote_code: bool = False) -> nn.Module:
    """Build ``auto`` (an Auto model class) from ``config``, reshape it, load the weights of ``name_or_path``."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        raise PruneError(f"{name_or_path!r}: a model with per-layer shapes ({STRUCTURE_KEY}) loads from a local folder only")
    model = restore_structure(auto.from_config(config, trust_remote_code=trust_remote_code))
    state = read_state_dict(folder)
    missing, unexpected = model.load_state_dict(state, strict=False)
    pointers = {name: tensor.data_ptr() for name, tensor in model.state_dict(keep_vars=True).items()}
    loaded = {pointers[name] for name in state if name in pointers}
    missing = [name for name in missing if pointers[name] not in loaded]  # tied to a loaded tensor: fine
    if missing or unexpected:
        raise PruneError(f"{name_or_path}: weights do not match the recorded structure "
                         f"(missing: {missing[:3]}, unexpected: {list(unexpected)[:3]})")
    return model
