"""Post-hoc and decoupled classifier re-balancing of a finished retraining: the entry point.

    python -m hlrs_tf.post_hoc --workdir=runs/<train run> --post_hoc=logit_adjust   # tau on the holdout
    python -m hlrs_tf.post_hoc --workdir=runs/<train run> --post_hoc=tau_norm --tau=1
    python -m hlrs_tf.post_hoc --workdir=runs/<train run> --post_hoc=crt

Reads the run's ``flags.cfg`` (its data, seed and ``--holdout_fraction``), writes
``<workdir>/post_hoc/<method>/model.keras`` and ``metrics.json`` (:mod:`hlrs_tf.train.rebalancing`);
``python -m hlrs_tf.export --model=<workdir>/post_hoc/<method>`` exports it. Bad input ends with one clear line
on stderr and exit status 2.
"""

from __future__ import annotations

import os

from absl import flags

from hlrs_tf.config.post_hoc import POST_HOC_METHODS, PostHocConfig  # imports no TensorFlow
from hlrs_tf.runtime import cli
from hlrs_tf.runtime.workdir import Workdir

_D = PostHocConfig(method="crt")
flags.DEFINE_string("workdir", None, "A finished `python -m hlrs_tf.train` work directory. Required.")
flags.DEFINE_enum(
    "post_hoc", None, list(POST_HOC_METHODS),
    "logit_adjust: bias - log(prior^tau) (Menon et al. 2021); tau_norm: class weight vectors divided by their "
    "norm^tau (Kang et al. 2020); crt: classifier re-initialised and retrained on the frozen features with "
    "class-balanced batches (Kang et al. 2020). Required.",
)
flags.DEFINE_float("tau", None, "tau of logit_adjust / tau_norm; unset: chosen on the run's validation split "
                   "(train with --holdout_fraction), never on the test set.")
flags.DEFINE_float("tau_max", _D.tau_max, "The tau search tries tau_steps + 1 values evenly in [0, tau_max].")
flags.DEFINE_integer("tau_steps", _D.tau_steps, "See --tau_max.")
flags.DEFINE_integer("crt_epochs", _D.crt_epochs, "cRT epochs (as the reference: 10).")
flags.DEFINE_integer("crt_batch_size", _D.crt_batch_size, "cRT batch size.")
flags.DEFINE_float("crt_learning_rate", _D.crt_learning_rate, "cRT's initial SGD learning rate (cosine to 0).")
flags.DEFINE_float("crt_momentum", _D.crt_momentum, "cRT's SGD momentum.")
flags.DEFINE_float("crt_weight_decay", _D.crt_weight_decay, "cRT's coupled L2 on the classifier.")
flags.DEFINE_integer("seed", None, "Seed of cRT's init and sampling; default: the run's --seed.")

FLAGS = flags.FLAGS
PROG = "hlrs_tf.post_hoc"


def fail(message: str) -> None:
    """Prints one error line and exits with status 2."""
    COMMAND.fail(message)


def _errors() -> tuple[type[Exception], ...]:
    from hlrs_tf.data.spec import DatasetError

    return (DatasetError,)


def _post_hoc() -> None:
    if not FLAGS.workdir:
        fail("--workdir is required: a finished `python -m hlrs_tf.train` work directory")
    if FLAGS.post_hoc is None:
        fail(f"--post_hoc is required: one of {', '.join(POST_HOC_METHODS)}")
    flags_file = Workdir(FLAGS.workdir, create=False).flags_file
    if not os.path.isfile(flags_file):
        fail(f"--workdir={FLAGS.workdir} is not a `python -m hlrs_tf.train` work directory: it has no flags.cfg")

    from hlrs_tf.config.train import TrainConfig
    from hlrs_tf.runtime.devices import set_thread_pools
    from hlrs_tf.train.rebalancing import run_post_hoc

    with open(flags_file) as f:
        train_config = TrainConfig.from_flags_text(f.read())
    config = PostHocConfig(  # ConfigError and PostHocError are ValueErrors: one line naming the flag
        method=FLAGS.post_hoc, tau=FLAGS.tau, tau_max=FLAGS.tau_max, tau_steps=FLAGS.tau_steps,
        crt_epochs=FLAGS.crt_epochs, crt_batch_size=FLAGS.crt_batch_size,
        crt_learning_rate=FLAGS.crt_learning_rate, crt_momentum=FLAGS.crt_momentum,
        crt_weight_decay=FLAGS.crt_weight_decay,
        seed=train_config.runtime.seed if FLAGS.seed is None else FLAGS.seed,
        eval_batch_size=train_config.runtime.eval_batch_size,
    )
    set_thread_pools(train_config.runtime.threads)
    metrics = run_post_hoc(FLAGS.workdir, train_config, config)
    record = metrics["post_hoc"]
    tau = f" tau={record['tau']:g} ({record['tau_chosen_by']})" if "tau" in record else ""
    print(f"{FLAGS.post_hoc}{tau}: test top-1 {metrics['top1']:.4f} (was {record['original_top1']:.4f}) | "
          f"many {metrics['many_shot']} | medium {metrics['medium_shot']} | few {metrics['few_shot']}")
    print(f"written: {os.path.join(FLAGS.workdir, 'post_hoc', FLAGS.post_hoc)}/model.keras, metrics.json")


COMMAND = cli.Command(PROG, _post_hoc, lazy_errors=_errors)
main, run = COMMAND.main, COMMAND.run


if __name__ == "__main__":
    run()
