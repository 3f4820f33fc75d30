"""The absl flags of the commands, generated from the config fields, and their conversion back to a config.

Each setting of a config (:mod:`hlrs_tf.config.schema`) is one flag of the same name, with the help text, the
allowed values and the lower bound written beside its field: :func:`define_search_flags` and
:func:`define_train_flags` define them for ``hlrs_tf.search`` (and ``compare``/``tune``, which pass search
flags on) and ``hlrs_tf.train``. Flags come from the command line and from flagfiles
(``--flagfile=configs/lt.cfg``; a flagfile may contain ``--flagfile=...`` lines, so configs nest; later flags
win). Only the entry points call these; the library receives a typed config.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import flags

from hlrs_tf.config.schema import Settings
from hlrs_tf.config.search import METHOD_PRESETS, SearchConfig
from hlrs_tf.config.train import TrainConfig

__all__ = ["config_from_flags", "define_flags", "define_search_flags", "define_train_flags", "effective_flags",
           "parse_config"]

FLAGS = flags.FLAGS
#: Flags that say where and whether to run rather than what: not settings, left out of a run's ``flags.cfg``.
RUN_FLAGS = ("workdir", "dry_run")


def define_flags(config_class: type[Settings], *, module_name: str, workdir_help: str | None = None,
                 dry_run_help: str | None = None, help_suffix: dict[str, str] | None = None,
                 names: tuple[str, ...] | None = None, defaults: dict | None = None, flag_values=FLAGS) -> None:
    """Defines one absl flag per setting of ``config_class`` (a config or a block), and ``--workdir`` and
    ``--dry_run`` when their help is given.

    The flag's type follows the field's annotation (an enum for a string with ``choices``), its default is the
    config's default (``None`` for a string that has to be given), its help and lower bound come from the field.

    Args:
        config_class: :class:`SearchConfig` or :class:`TrainConfig`.
        module_name: The module the flags are listed under (``--helpfull``; ``__main__``: the script's own,
            which ``--help`` lists too).
        workdir_help: Help of ``--workdir``.
        dry_run_help: Help of ``--dry_run``.
        help_suffix: Text appended to the help of some flags, by name.
        names: Only these settings (``hlrs_tf.export`` takes four of the data block's).
        defaults: Other defaults than the config's, by name.
        flag_values: The absl ``FlagValues`` to define them in.
    """
    help_suffix, defaults = help_suffix or {}, defaults or {}
    if module_name == "__main__":  # as absl names the flags a script defines itself (listed by --help)
        module_name = sys.argv[0]
    kwargs = dict(flag_values=flag_values, module_name=module_name)
    for leaf in config_class.leaves():
        if names is not None and leaf.name not in names:
            continue
        if leaf.name in defaults:
            leaf = dataclasses.replace(leaf, default=defaults[leaf.name])
        text = leaf.help + help_suffix.get(leaf.name, "")
        if leaf.kind == "bool":
            flags.DEFINE_bool(leaf.name, leaf.default, text, **kwargs)
        elif leaf.choices is not None:
            flags.DEFINE_enum(leaf.name, leaf.default, list(leaf.choices), text, **kwargs)
        elif leaf.kind == "int":
            flags.DEFINE_integer(leaf.name, leaf.default, text, lower_bound=leaf.lower_bound, **kwargs)
        elif leaf.kind == "float":
            flags.DEFINE_float(leaf.name, leaf.default, text, lower_bound=leaf.lower_bound, **kwargs)
        else:  # a string; an empty default is a required value (absl shows None)
            flags.DEFINE_string(leaf.name, leaf.default or None, text, **kwargs)
    if workdir_help is not None:
        flags.DEFINE_string("workdir", None, workdir_help, **kwargs)
    if dry_run_help is not None:
        flags.DEFINE_bool("dry_run", False, dry_run_help, **kwargs)


def define_search_flags(flag_values=FLAGS, module_name: str = "hlrs_tf.search") -> None:
    """The flags of ``hlrs_tf.search`` (``compare`` and ``tune`` take the same ones); a second call is a no-op.
    ``module_name="__main__"`` lists them in the command's ``--help``."""
    if "method" in flag_values:
        return
    preset = {name for values in METHOD_PRESETS.values() for name in values}
    define_flags(
        SearchConfig, module_name=module_name, flag_values=flag_values,
        help_suffix={name: " Preset by --method." for name in preset},
        workdir_help="Run directory; default: a new folder under runs/. Rerunning the same command on it resumes "
        "from the last complete epoch.",
        dry_run_help="Build the model and data specs, write flags.cfg and model_summary.json, run nothing (works "
        "offline for every dataset name).",
    )


def define_train_flags(flag_values=FLAGS, module_name: str = "hlrs_tf.train") -> None:
    """The flags of ``hlrs_tf.train``; a second call is a no-op. ``module_name="__main__"`` lists them in the
    command's ``--help``."""
    if "genotype" in flag_values:
        return
    define_flags(
        TrainConfig, module_name=module_name, flag_values=flag_values,
        workdir_help="Run directory; default: a new folder under runs/. Rerunning the same command on it resumes "
        "from the last complete epoch.",
        dry_run_help="Build the model, write flags.cfg and model_summary.json, train nothing.",
    )


def config_from_flags(config_class: type[Settings], flag_values=FLAGS):
    """The typed config of parsed flags. For the search: defaults < the ``--method`` preset < explicit flags (given
    on the command line or in a flagfile).

    Raises:
        ConfigError: Naming a bad flag and its allowed values.
    """
    values, explicit = {}, set()
    for name in config_class.setting_names():
        flag = flag_values[name]
        if flag.value is not None:
            values[name] = flag.value
        if flag.present:
            explicit.add(name)
    return config_class.from_flag_values(values, explicit)


def parse_config(config_class: type[Settings], argv=()):
    """The config of a command line, parsed in fresh absl flags (the process's global ``FLAGS`` are left alone):
    ``parse_config(SearchConfig, ["--flagfile=configs/quickstart.cfg", "--seed=1"])`` from a notebook or a test.

    Raises:
        absl.flags.Error: A flag absl refuses (unknown, wrong type, below its lower bound).
        ConfigError: A value the config refuses, naming the flag.
    """
    flag_values = flags.FlagValues()
    {SearchConfig: define_search_flags, TrainConfig: define_train_flags}[config_class](flag_values)
    flag_values([config_class.__name__, *argv])
    return config_from_flags(config_class, flag_values)


def effective_flags(config: Settings) -> str:
    """The effective settings of a run as flagfile text (one flag per line, the method preset resolved), so that
    rerunning with ``--flagfile=<workdir>/flags.cfg`` repeats the run exactly."""
    return config.to_flagfile(exclude=RUN_FLAGS)  # booleans as each command always wrote them
