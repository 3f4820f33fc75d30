"""Classifier re-balancing of a finished retraining: post-hoc logit adjustment, tau-norm, cRT (decoupled).

    python -m hlrs_tf.post_hoc --workdir=runs/<train run> --post_hoc=logit_adjust

Each method changes only the final linear classifier ``z = f W + b`` of the trained network
(:meth:`hlrs_tf.space.derived_network.DerivedNetwork.features` -> ``classifier``); the features are untouched, so the
corrected network is a plain ``DerivedNetwork``: saved as ``model.keras``, exported by ``hlrs_tf.export`` with
its parity check like the original.

* ``logit_adjust`` (Menon et al., ICLR 2021; google-research ``logit_adjustment/main.py``, its ``posthoc``
  mode: test logits minus ``log(base_probs ** tau)``): ``b <- b - log(pi^tau + 1e-12)`` with ``pi`` the class
  priors of the training split. The offsets are those of the logit-adjusted loss
  (:func:`hlrs_tf.losses.long_tail.logit_adjustments`, with ``utils.py``'s ``1e-12``), one helper for both.
* ``tau_norm`` (Kang et al., ICLR 2020; facebookresearch/classifier-balancing ``tau_norm.py``, ``pnorm`` and
  its sweep ``np.linspace(0, 2, 21)``, our default grid): each class's weight vector
  ``w_j <- w_j / ||w_j||_2^tau``. Departure: the bias is kept (``tau_norm.py`` scores with
  ``dotproduct_similarity``, which drops it; mmpretrain's ``TauNormHook`` keeps it, as here), so tau = 0 is
  exactly the identity.
* ``crt`` (Kang et al.; classifier-balancing ``config/ImageNet_LT/cls_crt.yaml``: the classifier
  re-initialised, the features fixed, 10 epochs of the ``ClassAwareSampler``, SGD lr 0.2 with cosine decay to
  0, momentum 0.9, weight decay 5e-4, batch 512, cross-entropy): the classifier gets PyTorch ``nn.Linear``'s
  default init (``U(-1/sqrt(F), 1/sqrt(F))``, seeded by ``--seed``). Departures: each example of a batch draws
  its class uniformly, then an image of it uniformly (the reference's sampler takes 4 per drawn class in a
  row); the features of the training split are computed once without augmentation and reused every epoch
  (the reference re-augments): with the features frozen and BN in inference mode this only removes the
  augmentation's variety, and makes cRT take seconds.

**Tau is chosen on the validation split, never on the test set**: the split the retraining held out with
``--holdout_fraction`` (:func:`hlrs_tf.data.long_tail.holdout_split`). The criterion is its balanced accuracy
(the mean per-class recall, the test set's measure on balanced data); ties go to the smaller tau. A retraining
without a holdout can only take an explicit ``tau``.

Output, beside the original: ``<workdir>/post_hoc/<method>/`` with ``model.keras`` and ``metrics.json`` (the
test evaluation of :func:`hlrs_tf.data.long_tail_metrics.evaluation_report` plus ``post_hoc``: the method, tau and
how it was
chosen, the validation curve, and the original run's top-1).

The library never reads absl flags; :mod:`hlrs_tf.post_hoc` is the command line.
"""

from __future__ import annotations

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from hlrs_tf.config.post_hoc import POST_HOC_METHODS, PostHocConfig, PostHocError
from hlrs_tf.config.train import TrainConfig
from hlrs_tf.data.long_tail import class_counts, holdout_split
from hlrs_tf.data.long_tail_metrics import evaluation_report
from hlrs_tf.data.pipeline import eval_dataset
from hlrs_tf.data.sources import load_long_tailed
from hlrs_tf.losses.long_tail import logit_adjustments
from hlrs_tf.runtime.workdir import Workdir, WorkdirLock, atomic_write_json, read_json
from hlrs_tf.train.task import MODEL_FILENAME, save_network

__all__ = ["POST_HOC_METHODS", "PostHocConfig", "PostHocError", "apply_post_hoc", "balanced_accuracy",
           "crt_classifier", "logit_adjusted_bias", "run_post_hoc", "tau_normalised_kernel"]

# ---------------------------------------------------------------------------- the maths (numpy, float64)
def balanced_accuracy(y_true, logits, num_classes: int) -> float:
    """Mean per-class recall of ``argmax(logits)`` (classes without examples are left out)."""
    y_true = np.asarray(y_true).reshape(-1)
    pred = np.argmax(np.asarray(logits), axis=-1)
    recalls = [np.mean(pred[y_true == c] == c) for c in range(num_classes) if np.any(y_true == c)]
    return float(np.mean(recalls))


def logit_adjusted_bias(bias, counts, tau: float) -> np.ndarray:
    """``b - log(pi^tau + 1e-12)``: logit adjustment folded into the classifier's bias."""
    return np.asarray(bias, np.float64) - logit_adjustments(counts, tau)


def tau_normalised_kernel(kernel, tau: float) -> np.ndarray:
    """Each class's weight vector (a column of the Keras ``(F, C)`` kernel) divided by its L2 norm to the tau."""
    kernel = np.asarray(kernel, np.float64)
    return kernel / np.linalg.norm(kernel, axis=0, keepdims=True) ** float(tau)


def _choose_tau(config: PostHocConfig, logits_of_tau, holdout, num_classes: int) -> tuple[float, dict]:
    """The tau to apply and how it was chosen: ``config.tau``, or the grid's best balanced accuracy on the
    validation split (``holdout = (features, labels)``; ties: the smaller tau)."""
    if config.tau is not None:
        return float(config.tau), {"tau_chosen_by": "--tau"}
    features, labels = holdout
    grid = config.tau_grid()
    scores = [balanced_accuracy(labels, logits_of_tau(features, tau), num_classes) for tau in grid]
    best = int(np.argmax(scores))  # the first maximum: the smallest tau among ties
    return round(float(grid[best]), 6), {
        "tau_chosen_by": "validation balanced accuracy",
        "validation_curve": [{"tau": round(float(t), 6), "balanced_accuracy": round(s, 6)}
                             for t, s in zip(grid, scores)],
    }


def crt_classifier(features, labels, num_classes: int, config: PostHocConfig) -> tuple[np.ndarray, np.ndarray]:
    """Classifier re-training on frozen features with class-balanced sampling (see the module docstring).

    Args:
        features: ``(N, F)`` float32 features of the training split.
        labels: ``(N,)`` labels.
        num_classes: Number of classes (every one must have a training example).
        config: ``crt_*`` settings and ``seed``.

    Returns:
        ``(kernel (F, C), bias (C,))`` as float32 arrays.
    """
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels).reshape(-1)
    n, dim = features.shape
    rng = np.random.default_rng(config.seed)
    bound = 1.0 / np.sqrt(dim)  # torch.nn.Linear's default init: kaiming_uniform(a=sqrt(5)) and its bias rule
    kernel = tf.Variable(rng.uniform(-bound, bound, (dim, num_classes)).astype(np.float32))
    bias = tf.Variable(rng.uniform(-bound, bound, (num_classes,)).astype(np.float32))
    steps_per_epoch = max(1, -(-n // config.crt_batch_size))
    total = config.crt_epochs * steps_per_epoch
    # The class-aware sampler: a class uniformly, then one of its images uniformly, drawn up front (seeded).
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    classes = rng.integers(0, num_classes, size=(total, config.crt_batch_size))
    picks = rng.random((total, config.crt_batch_size))
    index = np.empty_like(classes)
    for c, members in enumerate(by_class):
        mask = classes == c
        index[mask] = members[np.minimum((picks[mask] * len(members)).astype(np.int64), len(members) - 1)]
    schedule = keras.optimizers.schedules.CosineDecay(config.crt_learning_rate, decay_steps=total, alpha=0.0)
    optimizer = keras.optimizers.SGD(schedule, momentum=config.crt_momentum)
    optimizer.build([kernel, bias])
    x_all, y_all = tf.constant(features), tf.constant(labels.astype(np.int64))
    decay = config.crt_weight_decay

    @tf.function
    def step(idx):
        x, y = tf.gather(x_all, idx), tf.gather(y_all, idx)
        with tf.GradientTape() as tape:
            logits = tf.matmul(x, kernel) + bias
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=logits))
        grads = tape.gradient(loss, [kernel, bias])
        # Coupled L2, as torch.optim.SGD(weight_decay=...) of the reference (Keras' own is decoupled).
        optimizer.apply_gradients(zip([g + decay * v for g, v in zip(grads, [kernel, bias])], [kernel, bias]))

    for t in range(total):
        step(tf.constant(index[t]))
    return kernel.numpy(), bias.numpy()


# ---------------------------------------------------------------------------- the network
def _features(network, x, y, spec, batch_size: int) -> np.ndarray:
    """The classifier inputs of images ``x`` (normalised as in training, BN in inference mode), float32."""
    features = tf.function(lambda images: tf.cast(network.features(images, training=False), tf.float32))
    out = [features(images).numpy() for images, _ in eval_dataset(x, y, spec, batch_size)]
    return np.concatenate(out, axis=0)


def _require_validation(config: PostHocConfig, has_holdout: bool) -> None:
    """Refuses to choose a tau without a validation split (never on the test set)."""
    if config.method != "crt" and config.tau is None and not has_holdout:
        raise PostHocError(
            f"--post_hoc={config.method} needs a validation split to choose tau on, and this retraining held none "
            "out: retrain with --holdout_fraction (e.g. 0.1), or give --tau (the reference's default is 1)")


def apply_post_hoc(network, config: PostHocConfig, train_counts, train, holdout=None) -> dict:
    """Applies ``config.method`` to ``network``'s classifier in place.

    Args:
        network: A trained :class:`~hlrs_tf.space.derived_network.DerivedNetwork`.
        config: The method and its settings.
        train_counts: Class counts of the training split (the priors of ``logit_adjust``).
        train: ``(features, labels)`` of the training split (used by ``crt``; may be ``None`` otherwise).
        holdout: ``(features, labels)`` of the validation split, or ``None`` (then ``config.tau`` is required
            by ``logit_adjust`` and ``tau_norm``).

    Returns:
        The ``post_hoc`` record of ``metrics.json`` (method, tau and how it was chosen, settings).
    """
    kernel_var, bias_var = network.classifier.kernel, network.classifier.bias
    kernel, bias = np.asarray(kernel_var.numpy(), np.float64), np.asarray(bias_var.numpy(), np.float64)
    num_classes = bias.shape[0]
    record = {"method": config.method}
    _require_validation(config, holdout is not None)
    if config.method == "logit_adjust":
        tau, how = _choose_tau(config, lambda f, t: f @ kernel + logit_adjusted_bias(bias, train_counts, t),
                               holdout, num_classes)
        bias_var.assign(logit_adjusted_bias(bias, train_counts, tau).astype(np.float32))
        record.update(tau=tau, **how)
    elif config.method == "tau_norm":
        tau, how = _choose_tau(config, lambda f, t: f @ tau_normalised_kernel(kernel, t) + bias, holdout,
                               num_classes)
        kernel_var.assign(tau_normalised_kernel(kernel, tau).astype(np.float32))
        record.update(tau=tau, **how)
    else:
        new_kernel, new_bias = crt_classifier(train[0], train[1], num_classes, config)
        kernel_var.assign(new_kernel)
        bias_var.assign(new_bias)
        record.update({k: v for k, v in dataclasses.asdict(config).items() if k.startswith("crt_") or k == "seed"})
    return record


#: What to do about a retraining's file that cannot be read.
_RERUN = "rerun the retraining into a new --workdir"


def run_post_hoc(train_workdir: str, train_config: TrainConfig, config: PostHocConfig) -> dict:
    """Applies a post-hoc method to a finished retraining and writes ``<train_workdir>/post_hoc/<method>/``.

    Args:
        train_workdir: A finished ``hlrs_tf.train`` work directory (``model.keras`` and ``metrics.json``).
        train_config: Its config (from its ``flags.cfg``): the data, seed and holdout it was trained with.
        config: The post-hoc method and settings.

    Returns:
        The new ``metrics.json`` content.

    Raises:
        PostHocError: an unfinished work directory, a training split that differs from the one recorded, or
            ``logit_adjust`` / ``tau_norm`` without a validation split and without ``tau``.
        hlrs_tf.data.spec.DatasetError: the dataset cannot be loaded.
        hlrs_tf.runtime.workdir.WorkdirInUseError: another process is using the work directory.
    """
    wd = Workdir(train_workdir)
    model_path = wd.file(MODEL_FILENAME)
    for path in (model_path, wd.metrics_file):
        if not os.path.isfile(path):
            raise PostHocError(f"--workdir={train_workdir} is not a finished retraining: it has no "
                               f"{os.path.basename(path)} (`python -m hlrs_tf.train` writes it at the end)")
    _require_validation(config, train_config.data.holdout_fraction > 0)  # before any data is loaded
    out = os.path.join(wd.path, "post_hoc", config.method)
    # The retraining's own lock: no retraining resumes into it, and no other post-hoc run writes beside it, meanwhile.
    with WorkdirLock(wd.path):
        # The retraining's own long-tailed set.
        ds, x_lt, y_lt = load_long_tailed(train_config.data, train_config.runtime.seed)
        spec = ds.spec
        (x_tr, y_tr), holdout = holdout_split(x_lt, y_lt, train_config.data.holdout_fraction,
                                              train_config.runtime.seed)
        train_counts = class_counts(y_tr, spec.num_classes)
        # class_counts.json exists since the long-tail losses (older work directories lack it).
        recorded = (read_json(wd.class_counts_file, error=PostHocError, advice=_RERUN) or {}).get("counts")
        if recorded is not None and [int(c) for c in recorded] != train_counts.tolist():
            raise PostHocError(f"the training split rebuilt from {wd.flags_file} has class counts "
                               f"{train_counts.tolist()}, not the {recorded} of {wd.class_counts_file}: the data "
                               "changed since the retraining")
        network = keras.saving.load_model(model_path, compile=False)
        batch = config.eval_batch_size
        train = (_features(network, x_tr, y_tr, spec, batch), y_tr) if config.method == "crt" else None
        held = None if holdout is None else (_features(network, *holdout, spec, batch), holdout[1])
        record = apply_post_hoc(network, config, train_counts, train, held)

        test = eval_dataset(ds.x_test, ds.y_test, spec, batch)
        logits = np.concatenate([network(images, training=False).numpy() for images, _ in test], axis=0)
        original = read_json(wd.metrics_file, error=PostHocError, advice=_RERUN)
        record["original_top1"] = original.get("top1")
        metrics = evaluation_report(
            ds.y_test, logits, train_counts, spec.num_classes, dataset=spec.name,
            imbalance_ratio=train_config.data.imbalance_ratio, genotype=train_config.genotype,
            channels=train_config.channels, layers=train_config.layers, epochs=train_config.epochs,
            bbn=train_config.bbn, post_hoc=record)
        os.makedirs(out, exist_ok=True)
        save_network(network, os.path.join(out, MODEL_FILENAME))
        atomic_write_json(Workdir(out, create=False).metrics_file, metrics)  # last: its presence means "finished"
    return metrics

