"""The configuration schema: settings with their help beside them, blocks of settings, and configs made of blocks.

A *setting* is a dataclass field declared with :func:`setting`: its default, the help text of its flag, and
the allowed values (``choices``, an integer ``lower_bound``; a float's range is :data:`FLOAT_RANGES`). A
*block* is a frozen dataclass of settings that one stage reads whole (the data, the weight optimiser, the
architecture optimiser and its schedule, the loss, the runtime; :mod:`hlrs_tf.config.blocks`). A *config*
(:class:`~hlrs_tf.config.search.SearchConfig`, :class:`~hlrs_tf.config.train.TrainConfig`) composes blocks
with settings of its own.

Every setting has one name across the whole config, which is its flag: ``--learning_rate`` fills
``config.optimizer.learning_rate``. :class:`Settings` gives every config the flat view that flags, flagfiles
and method presets speak (:meth:`Settings.create`, :meth:`Settings.flat`, :meth:`Settings.replace`,
:meth:`Settings.to_flagfile`, :meth:`Settings.from_flags_text`); :mod:`hlrs_tf.config.flags` defines the absl
flags from the same fields. Nothing here imports TensorFlow or absl.
"""

from __future__ import annotations

import dataclasses
import math
import numbers

__all__ = ["FLOAT_RANGES", "ConfigError", "FloatRange", "Leaf", "Settings", "block", "check_floats", "require",
           "setting"]


class ConfigError(ValueError):
    """An invalid setting; the message names the flag and the allowed values."""


def setting(default, help: str, *, choices: tuple[str, ...] | None = None,
            lower_bound: int | float | None = None):
    """A setting: a dataclass field with its flag's help text and allowed values.

    Args:
        default: The value when the flag is not given.
        help: The flag's help text (``--helpfull``).
        choices: The allowed values of a string setting (an enum flag; checked by :class:`Settings`).
        lower_bound: Smallest value the flag parser accepts (absl refuses smaller ones before the config sees
            them).
    """
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "lower_bound": lower_bound})


def block(factory):
    """A block of settings inside a config: ``factory()`` (the block class, or a function returning an instance
    with this config's defaults) gives its default value."""
    return dataclasses.field(default_factory=factory, metadata={"block": True})


def flag_lines(text: str) -> dict[str, str]:
    """``{name: raw value}`` of flagfile text: ``--name=value`` lines, and booleans written the absl way
    (``--name`` / ``--noname``) as ``true`` / ``false``, like ``--name=true`` (no setting's name starts with ``no``).
    Other lines are skipped. The one reader of ``flags.cfg`` text: :meth:`Settings.from_flags_text` and the resume
    check (:func:`hlrs_tf.runtime.workdir.check_same_run`)."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("--"):
            continue
        name, equals, value = line[2:].partition("=")
        if not equals:
            name, value = (name[2:], "false") if name.startswith("no") else (name, "true")
        out[name] = value
    return out


def require(ok: bool, flag: str, value, allowed: str, error: type[Exception] = ConfigError) -> None:
    """Refuses a setting unless ``ok``: ``--<flag>=<value> is invalid: it must be <allowed>``.

    Raises:
        error: (:class:`ConfigError` by default) when ``ok`` is false.
    """
    if not ok:
        raise error(f"--{flag}={value!r} is invalid: it must be {allowed}")


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One setting of a config, as the flat view sees it.

    Attributes:
        name: Its name, which is its flag's.
        path: Attribute names from the config to it (``("optimizer", "learning_rate")``).
        field: The dataclass field (help, choices and bounds in its metadata).
        kind: ``"bool"``, ``"int"``, ``"float"``, ``"str"`` or ``"optional_str"`` (``str | None``).
        default: Its default in this config.
    """

    name: str
    path: tuple[str, ...]
    field: dataclasses.Field
    kind: str
    default: object

    @property
    def help(self) -> str:
        """The flag's help text."""
        return self.field.metadata.get("help", "")

    @property
    def choices(self) -> tuple[str, ...] | None:
        """The allowed values of a string setting, or ``None``."""
        return self.field.metadata.get("choices")

    @property
    def lower_bound(self):
        """The smallest value the flag accepts, or ``None``."""
        return self.field.metadata.get("lower_bound")

    def parse(self, raw: str):
        """The value of ``raw`` flag text (``true``/``false`` for a boolean).

        Raises:
            ConfigError: A value of the wrong type, naming the flag.
        """
        try:
            if self.kind == "bool":
                return {"true": True, "false": False}[raw.lower()]
            return {"int": int, "float": float}.get(self.kind, str)(raw)
        except (KeyError, ValueError):
            raise ConfigError(f"--{self.name}={raw} is invalid: it must be of type {self.kind}") from None


_KINDS = {"bool": "bool", "int": "int", "float": "float", "str": "str", "str | None": "optional_str"}


def _kind(annotation) -> str:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    if text not in _KINDS:
        raise TypeError(f"a setting must be annotated bool, int, float, str or str | None; got {text!r}")
    return _KINDS[text]


class Settings:
    """Base of every block and config: validation of its own settings, and the flat view of its settings.

    A subclass is a frozen dataclass whose fields are settings (:func:`setting`) or blocks (:func:`block`).
    Its ``__post_init__`` (call ``super().__post_init__()`` first) checks what the fields declare: a float in
    its :data:`FLOAT_RANGES` range, a string among its ``choices``.
    """

    def __post_init__(self):
        check_floats(self)
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            if choices is not None:
                value = getattr(self, f.name)
                require(value in choices, f.name, value, f"one of {', '.join(choices)}")

    # ----------------------------------------------------------------------------------------- the flat view
    @classmethod
    def leaves(cls) -> tuple[Leaf, ...]:
        """Every setting of this config, blocks flattened, in field order (the order of ``flags.cfg``)."""
        cached = cls.__dict__.get("_leaves")
        if cached is None:
            cached = tuple(_leaves(cls, (), None))
            names = [leaf.name for leaf in cached]
            duplicated = sorted({n for n in names if names.count(n) > 1})
            if duplicated:
                raise TypeError(f"{cls.__name__}: a setting name must be unique across blocks: {duplicated}")
            cls._leaves = cached
        return cached

    @classmethod
    def setting_names(cls) -> tuple[str, ...]:
        """The names (= flags) of every setting, in :meth:`leaves` order."""
        return tuple(leaf.name for leaf in cls.leaves())

    @classmethod
    def create(cls, **values):
        """The config with these settings (flat names: ``learning_rate=0.1``, not a block); the rest default.

        Raises:
            ConfigError: An unknown name, or a value the config refuses.
        """
        leaves = {leaf.name: leaf for leaf in cls.leaves()}
        unknown = sorted(set(values) - set(leaves))
        if unknown:
            raise ConfigError(f"{cls.__name__} has no setting {', '.join(unknown)}: the settings are "
                              f"{', '.join(leaves)}")
        return _build(cls, values, None)

    def flat(self) -> dict:
        """``{name: value}`` of every setting, in :meth:`leaves` order (JSON-ready)."""
        out = {}
        for leaf in self.leaves():
            value = self
            for attribute in leaf.path:
                value = getattr(value, attribute)
            out[leaf.name] = value
        return out

    def replace(self, **values):
        """A copy with these settings changed (flat names), validated like a new config."""
        return type(self).create(**{**self.flat(), **values})

    def to_dict(self) -> dict:
        """Plain-dict view (JSON-ready): the flat settings."""
        return self.flat()

    #: How :meth:`to_flagfile` writes booleans by default (see there).
    FLAGFILE_BOOL_STYLE = "equals"

    def to_flagfile(self, exclude=(), bool_style: str | None = None) -> str:
        """The settings as flagfile text, one line per setting in :meth:`leaves` order, so that
        ``--flagfile=<file>`` repeats exactly this config. ``None`` values are left out.

        Args:
            exclude: Names to leave out.
            bool_style: ``"equals"`` writes ``--name=true`` / ``--name=false``; ``"absl"`` writes ``--name`` /
                ``--noname`` (absl's ``Flag.serialize``). Both read back the same. Default: the class's
                :attr:`FLAGFILE_BOOL_STYLE`.
        """
        bool_style = bool_style or self.FLAGFILE_BOOL_STYLE
        lines = []
        for name, value in self.flat().items():
            if name in exclude or value is None:
                continue
            if isinstance(value, bool):
                if bool_style == "absl":
                    lines.append(f"--{'' if value else 'no'}{name}")
                    continue
                value = "true" if value else "false"
            lines.append(f"--{name}={value}")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_flags_text(cls, text: str):
        """The config a run's ``flags.cfg`` describes (``--name=value`` and ``--[no]name`` lines, as
        :meth:`to_flagfile` writes them). Flags this version does not know are skipped; flags the file lacks
        (added later) take their defaults. No absl: the flags of another command can be defined in the
        reading process (``hlrs_tf.post_hoc`` reads a retraining's file).

        Raises:
            ConfigError: A value of the wrong type, or one the config refuses (naming the flag).
        """
        leaves = {leaf.name: leaf for leaf in cls.leaves()}
        return cls.create(**{name: leaves[name].parse(raw) for name, raw in flag_lines(text).items()
                             if name in leaves})

    @classmethod
    def from_flag_values(cls, values: dict, explicit: set):
        """The config of parsed flag ``values`` (flat names); ``explicit`` holds the names given on the command
        line or in a flagfile (:class:`~hlrs_tf.config.search.SearchConfig` lets them win over its presets)."""
        del explicit  # only configs with presets need it
        return cls.create(**values)


def _leaves(cls, prefix: tuple[str, ...], default_instance):
    for f in dataclasses.fields(cls):
        if f.metadata.get("block"):
            sub_default = f.default_factory() if default_instance is None else getattr(default_instance, f.name)
            yield from _leaves(type(sub_default), prefix + (f.name,), sub_default)
        else:
            default = f.default if default_instance is None else getattr(default_instance, f.name)
            yield Leaf(f.name, prefix + (f.name,), f, _kind(f.type), default)


def _build(cls, values: dict, default_instance):
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("block"):
            sub_default = f.default_factory() if default_instance is None else getattr(default_instance, f.name)
            kwargs[f.name] = _build(type(sub_default), values, sub_default)
        elif f.name in values:
            kwargs[f.name] = values[f.name]
        elif default_instance is not None:
            kwargs[f.name] = getattr(default_instance, f.name)
    return cls(**kwargs)


# ------------------------------------------------------------------------------------------ float ranges
@dataclasses.dataclass(frozen=True)
class FloatRange:
    """The allowed values of a float setting: a finite number in an interval.

    Attributes:
        interval: ``"[low, high]"``, with ``(`` or ``)`` for an open end. ``high`` may be ``inf`` (no upper
            bound; the value must still be finite) or the name of another setting of the same block, which is
            then the bound (``learning_rate_min`` in ``[0, learning_rate]``).
        note: What the number is, added to the refusal.
    """

    interval: str
    note: str = ""

    def _bounds(self) -> tuple[bool, float, str, bool]:
        text = self.interval.strip()
        low, high = (part.strip() for part in text[1:-1].split(","))
        return text[0] == "(", float(low), high, text[-1] == ")"

    def allows(self, value, settings) -> bool:
        """Whether ``value`` is a finite real number in the interval (``settings`` supplies a named bound)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            return False
        low_open, low, high, high_open = self._bounds()
        high = float(getattr(settings, high)) if high.isidentifier() and high != "inf" else float(high)
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return above and below

    def describe(self, settings=None) -> str:
        """The allowed values in words, e.g. ``in [0, 1)`` or ``> 0 and finite`` (``settings``: the value of a
        bound named by another setting is shown too)."""
        low_open, _, high, _ = self._bounds()
        if high == "inf":
            low = self.interval.strip()[1:].split(",")[0].strip()
            text = "a finite number" if low == "-inf" else f"{'>' if low_open else '>='} {low} and finite"
        else:
            text = f"in {self.interval}"
            if high.isidentifier() and settings is not None:
                text += f" (--{high}={getattr(settings, high)!r})"
        return f"{text} ({self.note})" if self.note else text


#: The range of every float setting of the search, retraining and export configs, by flag name (one meaning
#: per name across the commands). A float setting missing here must still be finite.
FLOAT_RANGES: dict[str, FloatRange] = {
    "imbalance_ratio": FloatRange("[1, inf)", "N_max / N_min"),
    "train_portion": FloatRange("(0, 1)", "share of each class on the weight split"),
    "holdout_fraction": FloatRange("[0, 1)", "share of each class held out for post-hoc calibration; 0 = none"),
    "reweight_beta": FloatRange("[0, 1)"),  # the effective number (1 - beta^n) / (1 - beta) needs beta < 1
    "la_tau": FloatRange("[0, inf)", "logit adjustment's tau; 0 = plain cross-entropy"),
    "focal_gamma": FloatRange("[0, inf)", "the focal exponent; 0 = plain cross-entropy"),
    "freeze_threshold": FloatRange("[0, 1]"),  # compared with alpha_T, which lies in [0, 1]
    "learning_rate": FloatRange("(0, inf)"),
    "learning_rate_min": FloatRange("[0, learning_rate]"),  # the end of a decay from learning_rate
    "momentum": FloatRange("[0, 1)"),  # 1 or more: the velocity never decays
    "weight_decay": FloatRange("[0, inf)"),
    "grad_clip": FloatRange("(0, inf)"),  # a global-norm bound: 0 would zero every step
    "arch_learning_rate": FloatRange("[0, inf)"),  # 0: the alphas stay as initialised
    "arch_beta1": FloatRange("[0, 1)"),  # Adam's moment decays
    "arch_beta2": FloatRange("[0, 1)"),
    "arch_weight_decay": FloatRange("[0, inf)"),
    "auxiliary_weight": FloatRange("[0, inf)"),
    "drop_path_prob": FloatRange("[0, 1)"),  # 1 would drop every path
    "tolerance": FloatRange("(0, inf)", "largest allowed |logit difference|"),
}
_ANY_FINITE = FloatRange("(-inf, inf)")


def float_settings(config_class) -> tuple[str, ...]:
    """Names of the float settings (fields annotated ``float``) of a dataclass, in field order; of a
    :class:`Settings` config, those of its blocks too."""
    if isinstance(config_class, type) and issubclass(config_class, Settings):
        return tuple(leaf.name for leaf in config_class.leaves() if leaf.kind == "float")
    return _own_floats(config_class)


def _own_floats(config_class) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(config_class) if f.type in (float, "float"))


def check_floats(settings, error: type[Exception] = ConfigError) -> None:
    """Refuses a float setting of a dataclass that is not finite or outside its :data:`FLOAT_RANGES` range.

    The one check of every float flag of every command (from :class:`Settings`' ``__post_init__``, so
    library callers get it too). Fields are checked in order, so a bound named by another setting
    (``learning_rate``) has been checked before it is used.

    Raises:
        error: (:class:`ConfigError` by default) naming the flag, the value and the allowed range, e.g.
            ``--learning_rate=inf is invalid: it must be > 0 and finite``.
    """
    for name in _own_floats(type(settings)):  # a block's own floats: each block checks its own
        value = getattr(settings, name)
        allowed = FLOAT_RANGES.get(name, _ANY_FINITE)
        require(allowed.allows(value, settings), name, value, allowed.describe(settings), error)
