"""Command-line overrides, checked before Hydra runs, so a typo gets one line instead of Hydra's text.

* every config-group choice must exist (also each value of a sweep such as ``method=a,b``);
* every ``key=value`` must name a key of the composed config: ``sparsty=0.5`` -> ``unknown key
  'sparsty' (did you mean 'sparsity'?)``;
* ``+key=value`` may not add a top-level key that no code reads (Hydra accepts ``+sparsty=0.9``
  and the run would silently use the default); nested additions (``+method.option=...``) stay
  allowed. Keys under ``hydra.`` are Hydra's own and not checked here.

In a sweep every job must have the keys it is given: ``method=wanda,sparsegpt method.percdamp=0.1``
is refused (wanda has no ``percdamp``), where Hydra would stop the whole sweep at that job.
"""

from __future__ import annotations

import difflib
import importlib.util
from functools import lru_cache
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from prunecli.errors import PruneError

# Hydra flags that consume the next argument.
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--experimental-rerun"}
# launcher config -> the module it needs
LAUNCHER_EXTRAS = {"slurm": "hydra_plugins.hydra_submitit_launcher", "local_parallel": "hydra_plugins.hydra_submitit_launcher"}


def hydra_overrides(args: list[str]) -> list[str]:
    """The ``key=value`` overrides among Hydra's command-line arguments."""
    overrides, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in VALUE_FLAGS:
            skip = True
        elif not arg.startswith("-") and "=" in arg:
            overrides.append(arg)
    return overrides


def check(args: list[str]) -> None:
    """Check the overrides among ``prune run``'s arguments; a problem -> one-line :class:`PruneError`."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from prunecli.config import config_groups

    try:
        parsed = OverridesParser.create().parse_overrides(hydra_overrides(args))
    except HydraException as err:
        raise PruneError(str(err).strip().splitlines()[0]) from None
    groups = config_groups()
    check_group_choices(parsed, groups)
    check_keys(parsed, groups)


def choices_of(override: Any) -> list[str]:
    """The values of an override, one per job of a sweep (``[a,b]``: a list of a group's options, as typed)."""
    return list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]


def options_in(choice: str) -> list[str]:
    """The group options one value names: ``a``, or each of ``[a,b]``."""
    return [item.strip() for item in choice[1:-1].split(",") if item.strip()] if choice.startswith("[") else [choice]


def check_group_choices(parsed: list, groups: dict[str, list[str]]) -> None:
    """Every choice of a config group (also in sweeps like ``method=a,b``) must exist."""
    for override in parsed:
        group = override.key_or_group
        if group == "hydra/launcher":
            check_launcher(override.get_value_element_as_str())
        if group not in groups or override.is_delete():
            continue
        for choice in (option for value in choices_of(override) for option in options_in(value)):
            if choice not in groups[group]:
                raise PruneError(f"unknown {group} {choice!r} (choose from: {', '.join(groups[group])})")


def check_launcher(name: str) -> None:
    """The launcher's plugin must be installed; prunecli's own (``slurm``) is registered with Hydra here."""
    module = LAUNCHER_EXTRAS.get(name)
    if module and importlib.util.find_spec(module) is None:
        raise PruneError(f"hydra/launcher={name} needs hydra-submitit-launcher, which is not installed: pip install 'prunecli[slurm]'")
    if name == "slurm":
        importlib.import_module("hydra_plugins.prunecli")


def prefix(override: Any) -> str:
    """``+`` / ``++`` as typed (Hydra's add and force-add)."""
    return {"ADD": "+", "FORCE_ADD": "++"}.get(override.type.name, "")


@lru_cache(maxsize=None)
def compose(selections: tuple[str, ...]) -> DictConfig:
    """``run.yaml`` composed with these group selections only (no key overrides), unresolved."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException

    from prunecli.config import config_dir

    try:
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir()), job_name="prune"):
            return hydra_compose(config_name="run", overrides=list(selections))
    except HydraException as err:
        raise PruneError(str(err).strip().splitlines()[0]) from None


def has_key(cfg: Any, key: str) -> bool:
    node = cfg
    for part in key.split("."):
        if isinstance(node, DictConfig) and part in node.keys():  # `in node` is False for a ??? value
            node = node._get_node(part)
        elif isinstance(node, ListConfig) and part.isdigit() and int(part) < len(node):
            node = node._get_node(int(part))
        else:
            return False
    return True


def dotted_keys(container: Any, stem: str = "") -> list[str]:
    """Every key path of a plain container, e.g. ``method.percdamp``."""
    if not isinstance(container, dict):
        return []
    keys = []
    for key, value in container.items():
        path = f"{stem}{key}"
        keys += [path, *dotted_keys(value, path + ".")]
    return keys


def closest(key: str, cfg: DictConfig) -> str:
    known = [name for name in dotted_keys(OmegaConf.to_container(cfg, resolve=False)) if not name.startswith("hydra")]
    head, leaf = key.split(".")[0], key.rsplit(".", 1)[-1]
    moved = sorted((name for name in known if name.startswith(head + ".") and name.endswith("." + leaf)), key=len)  # eval.batch_size -> eval.perplexity.batch_size
    match = moved[:1] or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""


def check_keys(parsed: list, groups: dict[str, list[str]]) -> None:
    """Every key override names a key of the composed config; a ``+`` addition at top level is refused."""
    keys = [o for o in parsed if o.key_or_group not in groups and not o.is_delete() and not o.key_or_group.startswith("hydra")]
    if not keys:
        return
    selected = [o for o in parsed if o.key_or_group in groups and not o.key_or_group.startswith("hydra") and not o.is_delete()]
    first = tuple(f"{prefix(o)}{o.key_or_group}={choices_of(o)[0]}" for o in selected)
    swept = [o for o in selected if len(choices_of(o)) > 1]
    variants = {" ".join(f"{o.key_or_group}={choices_of(o)[0]}" for o in swept): first}
    for group in swept:  # each swept group's other choices, the rest at their first
        for choice in choices_of(group)[1:]:
            variants[f"{group.key_or_group}={choice}"] = tuple(
                f"{prefix(o)}{o.key_or_group}={choice}" if o is group else item for o, item in zip(selected, first))
    for override in keys:
        key = override.key_or_group
        lacking = [label for label, variant in variants.items() if not has_key(compose(variant), key)]
        if not lacking:
            continue
        base = compose(first)
        if len(lacking) < len(variants):  # Hydra would stop the whole sweep at that job
            raise PruneError(f"key {key!r} does not exist for the sweep's jobs with {', '.join(lacking)}: "
                             "every job of a sweep needs the keys it is given")
        if not prefix(override):
            raise PruneError(f"unknown key {key!r}{closest(key, base)}")
        if "." not in key:
            raise PruneError(f"'{prefix(override)}{key}' adds a top-level key that nothing reads{closest(key, base)}")
