"""Filter (channel) pruning of CNNs that physically shrinks the model, dependency-aware.

* :mod:`graph`: torch.fx trace -> channel groups (convs, BatchNorms, depthwise convs,
  residual adds, concatenations, flatten -> Linear);
* :mod:`importance`: the filters' evidence and the CNN-only criteria ``bn_gamma``,
  ``geometric_median`` (FPGM); ``l1``, ``l2``, ``taylor`` are shared (:mod:`prunecli.structured.criteria`);
* :mod:`remove`: slice every coupled module, or zero the same channels (the mask twin);
* :mod:`methods`: ``method=filters`` (skeleton and selection shared with the transformer part:
  :mod:`prunecli.structured.criteria`, :mod:`prunecli.structured.select`).
"""
