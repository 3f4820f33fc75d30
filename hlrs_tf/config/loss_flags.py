"""The ``--loss`` flags, defined once for the two commands that train (``hlrs_tf.search`` and ``hlrs_tf.train``).

Each command's flag module calls :func:`define_loss_flags` with its config's defaults; only the entry points
import those modules (absl flags are process-global), so the same names never meet in one process.
"""

from __future__ import annotations

from absl import flags

from hlrs_tf.config.choices import CLASS_WEIGHT_REDUCTIONS, DRW_LOSSES, LOSSES


def define_loss_flags(defaults, module_name: str, preset: str = "") -> None:
    """Defines ``--loss``, ``--reweight_beta``, ``--class_weight_reduction``, ``--la_tau``, ``--focal_gamma``
    and ``--drw_epoch`` with the defaults of ``defaults`` (a search or retraining config).

    Args:
        defaults: A config instance whose fields of those names are the defaults.
        module_name: The command's flag module, which the flags are listed under (``--helpfull``,
            ``FLAGS.get_flags_for_module``) as if it had defined them.
        preset: Appended to the help of ``--loss`` (the search's ``--method`` presets it).
    """
    flags.DEFINE_enum(
        "loss", defaults.loss, list(LOSSES),
        "ce; class_balanced (CE weighted by the effective number of samples); logit_adjusted (Menon et al.: "
        "CE(z + tau log prior)); balanced_softmax (Ren et al.: CE(z + log n)); ldam (Cao et al.: margins "
        "0.5 n^-1/4 / max, scale 30; with --drw_epoch for LDAM-DRW); focal (Lin et al.: (1 - p_t)^gamma CE); "
        "class_balanced_focal (focal weighted by the effective number). Priors and counts are the long-tailed "
        f"training split's, saved to class_counts.json{preset}.", module_name=module_name,
    )
    flags.DEFINE_float("reweight_beta", defaults.reweight_beta,
                       "beta of the effective number (class_balanced, class_balanced_focal, DRW weights).",
                       module_name=module_name)
    flags.DEFINE_enum(
        "class_weight_reduction", defaults.class_weight_reduction, list(CLASS_WEIGHT_REDUCTIONS),
        "Reduction of the class-weighted losses (and DRW): weighted_mean, sum(w_y l) / sum(w_y) over the batch "
        "(LDAM-DRW's F.cross_entropy(weight=w); the step size does not depend on the batch's mean weight), or "
        "batch_mean, sum(w_y l) / batch size (Cui et al.'s TF code; at ratio 100 about 5.8x smaller steps than "
        "plain CE).", module_name=module_name,
    )
    flags.DEFINE_float("la_tau", defaults.la_tau, "tau of --loss=logit_adjusted (0 = plain CE).",
                       module_name=module_name)
    flags.DEFINE_float("focal_gamma", defaults.focal_gamma,
                       "gamma of --loss=focal / class_balanced_focal (0 = plain / class-balanced CE).",
                       module_name=module_name)
    flags.DEFINE_integer(
        "drw_epoch", defaults.drw_epoch,
        f"DRW (deferred re-weighting, LDAM-DRW) for --loss={', '.join(DRW_LOSSES)}: unweighted before this "
        "0-based epoch, effective-number weights (--reweight_beta) from it on; 0 = no DRW. Logged as drw_active.",
        lower_bound=0, module_name=module_name,
    )
