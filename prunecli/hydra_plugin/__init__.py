"""Installed as ``hydra_plugins.prunecli`` (pyproject's package-dir): Hydra instantiates launchers
only from its ``hydra_plugins`` namespace. The logic lives in :mod:`prunecli.slurm`.

A wheel install is found by Hydra's own plugin scan; an editable install is not (its finder maps
the package on import but does not list it), so importing this module registers the class.
"""

from hydra.core.plugins import Plugins

from prunecli.slurm import WatchedSlurmLauncher


class SlurmLauncher(WatchedSlurmLauncher):
    """``hydra/launcher=slurm`` (configs/hydra/launcher/slurm.yaml)."""


Plugins.instance().register(SlurmLauncher)
