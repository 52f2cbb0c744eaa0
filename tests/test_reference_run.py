"""scripts/reference_run.py: the plumbing that lets the authors' code run on transformers 5.x and the protocol's texts."""

import importlib.util
from pathlib import Path

import torch

from tests.conftest import tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "reference_run.py"
spec = importlib.util.spec_from_file_location("reference_run", SCRIPT)
reference_run = importlib.util.module_from_spec(spec)
spec.loader.exec_module(reference_run)


def test_a_block_called_the_authors_way_gives_the_models_own_output():
    """The authors' loop calls a block with ``attention_mask`` and ``position_ids`` only; with the pre-hook it
    gets the rotary embeddings the model's forward would pass, so its output is the one inside the model."""
    model = tiny_model("llama").eval()
    seen = {}
    block = model.model.layers[1]
    handle = block.register_forward_hook(lambda module, args, kwargs, output: seen.update(args=args, kwargs=kwargs, output=output),
                                         with_kwargs=True)
    with torch.no_grad():
        model(input_ids=torch.randint(0, 97, (1, 12), generator=torch.Generator().manual_seed(0)), use_cache=False)
    handle.remove()
    hidden = seen["args"][0] if seen["args"] else seen["kwargs"]["hidden_states"]
    positions = torch.arange(12)[None]
    reference_run.add_position_embeddings(model)
    with torch.no_grad():
        alone = block(hidden, attention_mask=None, position_ids=positions)
    inside = seen["output"][0] if isinstance(seen["output"], tuple) else seen["output"]
    torch.testing.assert_close(alone, inside, rtol=0, atol=0)


def test_the_documents_read_as_the_authors_get_c4_reads_a_split():
    split = reference_run.Documents(["a", "b", "c"])
    assert len(split) == 3 and split[1]["text"] == "b" and split[:2]["text"] == ["a", "b"]
