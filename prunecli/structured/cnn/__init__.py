"""Filter (channel) pruning of CNNs that physically shrinks the model, dependency-aware.

* :mod:`graph`: torch.fx trace -> channel groups (convs, BatchNorms, depthwise convs,
  residual adds, concatenations, flatten -> Linear);
* :mod:`importance`: ``l1``, ``l2``, ``bn_gamma``, ``taylor``, ``geometric_median`` (FPGM);
* :mod:`remove`: slice every coupled module, or zero the same channels (the mask twin);
* :mod:`methods`: ``method=filters`` (selection shared with the transformer part:
  :mod:`prunecli.structured.select`).
"""
