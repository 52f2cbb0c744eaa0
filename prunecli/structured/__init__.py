"""Structured pruning of transformers that physically shrinks the model (Torch-Pruning style).

One concern per module:

* :mod:`groups`: per model family, which weight slices of a block belong together
  (attention heads / GQA KV groups, FFN neurons);
* :mod:`criteria`: what transformers and CNNs share: one criterion registry, the weight
  criteria (``l1``, ``l2``, ``taylor``), gradient collection, the plan -> apply -> record skeleton;
* :mod:`importance`: the transformer's evidence and its own criteria (``activation``,
  ``fluctuation``, ``entropy``, ``confidence``), Block Influence for whole blocks;
* :mod:`select`: which groups go (``per_layer`` or ``global`` ranking, GQA constraints);
* :mod:`compensation`: FLAP bias compensation for the removed inputs;
* :mod:`mask`: zero the chosen slices, shapes unchanged (the masked-vs-removed contrast);
* :mod:`remove`: slice the layers, fix module attributes and the config, drop blocks, and
  :func:`~prunecli.structured.remove.restore_structure` for reloading a shrunk model;
* :mod:`loading`: ``from_pretrained`` for checkpoints with per-layer shapes;
* :mod:`methods`: the ``heads``, ``head_mask``, ``ffn`` and ``layers`` methods.
"""

# Its method modules import this package's machinery, and the method registry imports them: register the
# methods first, so that importing any module here on its own (e.g. ``structured.remove``) finds no half-made cycle.
import prunecli.methods  # noqa: E402,F401
