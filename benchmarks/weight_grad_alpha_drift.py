"""How much the weight gradient moves when only the alphas take one architecture step.

    python benchmarks/weight_grad_alpha_drift.py --channels=4 --layers=3 --steps=12

Second order runs five forward/backward passes per step; its first (the virtual step's gradient at
``(w, alpha_t)`` on the training batch) and its last (the real weight step at ``(w, alpha_{t+1})`` on the same
batch) differ only by one architecture step in the alphas. Reusing the first for the weight step would save a
pass (second order ~2.0x first order instead of ~2.7x) but is not what the reference does. This prints, at a few
steps of a real second-order search on digits, the relative change of the weight gradient caused by the alpha
step alone, beside how much the gradient of another batch differs (the noise SGD already lives with).
"""

from __future__ import annotations

import argparse
import sys

from hlrs_tf.runtime.cli import prepare_process

prepare_process()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--channels", type=int, default=4)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--every", type=int, default=4, help="measure at every n-th step")
    args = p.parse_args(argv)

    import keras
    import numpy as np
    import tensorflow as tf

    from hlrs_tf.data.long_tail import stratified_split
    from hlrs_tf.data.pipeline import normalize
    from hlrs_tf.data.sources import load_dataset
    from hlrs_tf.search.bilevel import DartsSearchModel
    from hlrs_tf.space.supernet import SearchNetwork

    ds = load_dataset("digits")
    idx_w, idx_a = stratified_split(ds.y_train, 0.5, seed=0)
    n = args.batch_size
    batches_available = min(len(idx_w), len(idx_a)) // n

    def batch(i):
        s = slice(n * (i % batches_available), n * (i % batches_available) + n)
        side = lambda idx: (normalize(tf.constant(ds.x_train[idx][s]), ds.spec),  # noqa: E731
                            tf.constant(ds.y_train[idx][s], tf.int32))
        return side(idx_w), side(idx_a)

    keras.utils.set_random_seed(0)
    model = DartsSearchModel(SearchNetwork(args.channels, ds.spec.num_classes, args.layers), order="second")
    model.compile(optimizer=keras.optimizers.SGD(0.025, momentum=0.9),
                  arch_optimizer=keras.optimizers.Adam(3e-4, beta_1=0.5, beta_2=0.999))
    model.build_all(ds.spec.image_shape)
    step = tf.function(model.train_step)
    weights, _ = model.split_variables()

    def weight_grad(b):
        with tf.GradientTape() as tape:
            loss, _ = model._loss(b, training=True)
        return np.concatenate([g.numpy().ravel() for g in tape.gradient(loss, weights)])

    for i in range(args.steps):
        b = batch(i)
        if (i + 1) % args.every:
            step(b)
            continue
        before = [w.numpy() for w in weights]
        g_old = weight_grad(b[0])
        step(b)  # architecture step, then weight step; undo the weight step, keep the new alphas
        for w, v in zip(weights, before):
            w.assign(v)
        g_new = weight_grad(b[0])
        g_again = weight_grad(b[0])
        g_other = weight_grad(batch(i + 1)[0])
        norm = np.linalg.norm(g_new)
        print(f"step {i}: alpha step moves the weight gradient by {np.linalg.norm(g_new - g_old) / norm:.2e} "
              f"(relative); recomputed: {np.linalg.norm(g_again - g_new) / norm:.1e}; another batch: "
              f"{np.linalg.norm(g_other - g_new) / norm:.2f}")


if __name__ == "__main__":
    sys.exit(main())
