"""The configuration schema: blocks, the flat view, flags generated from the fields, and ``flags.cfg`` round trips.

The flags are defined in fresh ``absl.flags.FlagValues`` (not the process-global ones), so the search's and the
retraining's flags, which share names, can both be checked in one process.
"""

from __future__ import annotations

import dataclasses

import pytest
from absl import flags

from hlrs_tf.config import flags as config_flags
from hlrs_tf.config.blocks import ArchOptimizer, DataConfig, LossConfig, RuntimeConfig, WeightOptimizer
from hlrs_tf.config.schema import ConfigError
from hlrs_tf.config.search import ADDED_FLAG_DEFAULTS as SEARCH_ADDED
from hlrs_tf.config.search import SearchConfig
from hlrs_tf.config.train import ADDED_FLAG_DEFAULTS as TRAIN_ADDED
from hlrs_tf.config.train import TrainConfig
from hlrs_tf.runtime.workdir import Workdir, check_same_run

DEFINE = {SearchConfig: config_flags.define_search_flags, TrainConfig: config_flags.define_train_flags}


def fresh_flags(config_class) -> flags.FlagValues:
    fv = flags.FlagValues()
    DEFINE[config_class](fv)
    return fv


def parse(config_class, *args):
    return config_flags.parse_config(config_class, args)


# ------------------------------------------------------------------------------------------------ blocks
def test_configs_compose_the_shared_blocks():
    search, train = SearchConfig(), TrainConfig.create(genotype="DARTS_V2")
    for config in (search, train):
        assert isinstance(config.data, DataConfig) and isinstance(config.objective, LossConfig)
        assert isinstance(config.optimizer, WeightOptimizer) and isinstance(config.runtime, RuntimeConfig)
    assert isinstance(search.arch, ArchOptimizer)
    # The same block, with each command's own default where the reference differs: DARTS' search decays the
    # weight lr to 0.001 (train_search.py), its evaluation to 0 (train.py).
    assert search.optimizer.learning_rate_min == 0.001 and train.optimizer.learning_rate_min == 0.0
    assert dataclasses.replace(search.optimizer, learning_rate_min=0.0) == train.optimizer


def test_flat_view_names_each_setting_once():
    for config_class in (SearchConfig, TrainConfig):
        names = config_class.setting_names()
        assert len(names) == len(set(names))
        for leaf in config_class.leaves():
            assert leaf.help.strip(), f"--{leaf.name} has no help text"
    config = SearchConfig.create(learning_rate=0.1, dataset="digits", arch_learning_rate=1e-3, threads=1)
    assert (config.optimizer.learning_rate, config.data.dataset, config.arch.arch_learning_rate,
            config.runtime.threads) == (0.1, "digits", 1e-3, 1)
    flat = config.flat()
    assert list(flat) == list(SearchConfig.setting_names())
    assert flat["learning_rate"] == 0.1 and flat["threads"] == 1
    assert SearchConfig.create(**flat) == config
    assert config.replace(seed=3).runtime.seed == 3 and config.replace(seed=3).optimizer == config.optimizer


def test_unknown_and_invalid_settings_are_refused():
    with pytest.raises(ConfigError, match="SearchConfig has no setting genotype"):
        SearchConfig.create(genotype="DARTS_V2")
    with pytest.raises(ConfigError, match=r"^--learning_rate=0\.0 is invalid: it must be > 0 and finite"):
        SearchConfig().replace(learning_rate=0.0)
    with pytest.raises(ConfigError, match=r"^--strategy='nope' is invalid: it must be one of auto, default"):
        SearchConfig.create(strategy="nope")
    with pytest.raises(ConfigError, match=r"^--warmup_epochs=5 is invalid: it must be an integer in \[0, epochs=5\)"):
        SearchConfig.create(warmup_epochs=5, epochs=5)  # a cross-block check, in the composing config


# ------------------------------------------------------------------------------------------------ flags
@pytest.mark.parametrize("config_class", [SearchConfig, TrainConfig])
def test_flags_are_generated_from_the_fields(config_class):
    fv = fresh_flags(config_class)
    defined = {name for name in fv if name in set(config_class.setting_names()) | set(config_flags.RUN_FLAGS)}
    assert defined == set(config_class.setting_names()) | set(config_flags.RUN_FLAGS)
    kinds = {"bool": flags.BooleanParser, "int": flags.IntegerParser, "float": flags.FloatParser}
    for leaf in config_class.leaves():
        flag = fv[leaf.name]
        assert leaf.help in flag.help, leaf.name  # absl puts an enum's choices in front
        if leaf.choices is not None:
            assert list(flag.parser.enum_values) == list(leaf.choices), leaf.name
        elif leaf.kind in kinds:
            assert isinstance(flag.parser, kinds[leaf.kind]), leaf.name
        assert flag.default == (leaf.default if leaf.default != "" else None), leaf.name
        if leaf.lower_bound is not None:
            assert flag.parser.lower_bound == leaf.lower_bound, leaf.name
    # One meaning of --threads across the commands: the same help, from the runtime block.
    assert fv["threads"].help == RuntimeConfig.__dataclass_fields__["threads"].metadata["help"]


def test_method_presets_mark_their_flags_and_explicit_flags_win():
    fv = fresh_flags(SearchConfig)
    assert fv["loss"].help.endswith("Preset by --method.") and fv["arch_lr_schedule"].help.endswith("--method.")
    assert not fv["learning_rate"].help.endswith("Preset by --method.")
    config = parse(SearchConfig, "--method=hlrs", "--arch_lr_schedule=constant")
    assert config.bbn and config.arch.arch_lr_schedule == "constant"  # explicit, though equal to the default


# ------------------------------------------------------------------------------------------------ flags.cfg
ROUND_TRIPS = [
    (SearchConfig, ()),
    (SearchConfig, ("--method=hlrs", "--epochs=7", "--noaugment", "--learning_rate=0.1", "--arch_learning_rate=6e-4")),
    (SearchConfig, ("--method=pcdarts", "--dataset=digits", "--threads=2", "--deterministic", "--data_dir=/x")),
    (SearchConfig, ("--method=darts_ldam_drw", "--precision=mixed_bfloat16", "--strategy=mirrored")),
    (TrainConfig, ("--genotype=DARTS_V2",)),
    (TrainConfig, ("--genotype=/w/run", "--noaugment", "--nocutout", "--bbn", "--epochs=3", "--holdout_fraction=0.2")),
    (TrainConfig, ("--genotype=DARTS_V1", "--loss=ldam", "--drw_epoch=2", "--epochs=5", "--manual_dir=/m")),
]


@pytest.mark.parametrize("config_class,args", ROUND_TRIPS)
def test_flags_cfg_round_trips_exactly(tmp_path, config_class, args):
    config = parse(config_class, *args)
    text = config_flags.effective_flags(config)
    path = tmp_path / "flags.cfg"
    path.write_text(text)
    again = parse(config_class, f"--flagfile={path}")  # what a rerun with --flagfile=<workdir>/flags.cfg reads
    assert again == config
    assert config_flags.effective_flags(again) == text
    assert config_class.from_flags_text(text) == config  # post_hoc reads a retraining's file without absl
    # Every setting is in the file, and none of the flags that only say where to run.
    names = {line[2:].split("=")[0] for line in text.splitlines()}
    bools = {leaf.name for leaf in config_class.leaves() if leaf.kind == "bool"}
    names = {n[2:] if n.startswith("no") and n[2:] in bools else n for n in names}
    expected = set(config_class.setting_names()) - {n for n, v in config.flat().items() if v is None}
    assert names == expected


# flags.cfg as the search wrote it before the config had blocks (3516d43): one line per field of the flat
# dataclass, in its order (written here several to a line). The same settings in today's block order must read
# back as the same run.
OLD_SEARCH_FLAGS_CFG = "\n".join("""
--dataset=cifar10 --fashion_mnist_dir=/usr/share/datasets/fashion-mnist --imbalance_ratio=100.0
--train_portion=0.5 --augment=false --method=hlrs --weight_sampler=uniform --arch_sampler=uniform
--loss=ce --reweight_beta=0.9999 --class_weight_reduction=weighted_mean --la_tau=1.0
--focal_gamma=2.0 --drw_epoch=0 --bbn=true --mixing=parabolic --arch_lr_schedule=mixing
--freeze_threshold=0.5 --warmup_epochs=0 --max_skip_connect=-1 --stop_on_skip=0 --channels=16
--layers=8 --init=reference --cell_impl=fused --partial_channels=1 --epochs=7 --batch_size=64
--steps_per_epoch=0 --order=first --learning_rate=0.1 --learning_rate_min=0.001 --momentum=0.9
--weight_decay=0.0003 --grad_clip=5.0 --arch_learning_rate=0.0006 --arch_beta1=0.5
--arch_beta2=0.999 --arch_weight_decay=0.001 --strategy=auto --cpu_replicas=0 --seed=0
--deterministic=false --precision=float32 --eval_batch_size=256 --verbose=1 --threads=0
""".split()) + "\n"


def test_an_old_flags_cfg_reads_back_and_resumes(tmp_path):
    path = tmp_path / "old.cfg"
    path.write_text(OLD_SEARCH_FLAGS_CFG)
    old = parse(SearchConfig, f"--flagfile={path}")
    new = parse(SearchConfig, *ROUND_TRIPS[1][1])
    assert old == new == SearchConfig.from_flags_text(OLD_SEARCH_FLAGS_CFG)
    new_text = config_flags.effective_flags(new)
    assert sorted(new_text.splitlines()) == sorted(OLD_SEARCH_FLAGS_CFG.splitlines())  # same lines, block order
    # A checkpointed run written with the old file resumes under the new one, and a changed setting is refused.
    wd = Workdir(str(tmp_path / "run"), create=True)
    open(wd.state_file, "w").write('{"epoch": 1}')
    open(wd.flags_file, "w").write(OLD_SEARCH_FLAGS_CFG)
    check_same_run(wd, new_text, SEARCH_ADDED)
    with pytest.raises(ValueError, match="--learning_rate=0.1 -> 0.2"):
        check_same_run(wd, config_flags.effective_flags(new.replace(learning_rate=0.2)), SEARCH_ADDED)


def test_a_retraining_flags_cfg_keeps_absl_booleans(tmp_path):
    config = parse(TrainConfig, "--genotype=DARTS_V2", "--nocutout")
    text = config_flags.effective_flags(config)
    assert "--nocutout" in text.splitlines() and "--augment" in text.splitlines()  # as hlrs_tf.train always wrote
    wd = Workdir(str(tmp_path / "run"), create=True)
    open(wd.state_file, "w").write('{"epoch": 1}')
    open(wd.flags_file, "w").write(text)
    check_same_run(wd, text, TRAIN_ADDED)
    # A changed boolean is a changed run too (absl's --[no]name lines were once skipped by the resume check).
    with pytest.raises(ValueError, match="--cutout=false -> true"):
        check_same_run(wd, config_flags.effective_flags(config.replace(cutout=True)), TRAIN_ADDED)
    # ... and the two ways of writing a boolean are the same value.
    check_same_run(wd, text.replace("--nocutout", "--cutout=false"), TRAIN_ADDED)


def test_no_setting_name_starts_with_no():
    # The resume check reads a bare --noname line as name=false (hlrs_tf.runtime.workdir._flag_map).
    for config_class in (SearchConfig, TrainConfig):
        assert not [n for n in config_class.setting_names() if n.startswith("no")]

