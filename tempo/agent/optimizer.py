"""Adam with global-norm clipping and DreamerV2's multiplicative weight decay."""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf

from tempo import replicas


class Optimizer(tf.Module):
    """Clips gradients by their global norm, decays weights by (1 - wd), then
    takes an Adam step; returns the gradient norm for logging.

    Keeping clipping and decay here (not in Keras' options) makes them exactly
    DreamerV2's: decay is `var *= 1 - wd`, independent of the learning rate.
    """

    def __init__(
        self,
        lr: float = 1e-4,
        eps: float = 1e-5,
        clip: float | None = 100.0,
        wd: float | None = 1e-6,
        name: str = "optimizer",
    ):
        super().__init__(name=name)
        if lr <= 0:
            raise ValueError(f"{name}: learning rate must be positive, got {lr}.")
        self.lr = lr
        self.clip = clip
        self.wd = wd
        self.adam = tf.keras.optimizers.Adam(learning_rate=lr, epsilon=eps, name=name)

    def build(self, variables: Sequence[tf.Variable]) -> None:
        """Creates the Adam slots eagerly, outside any tf.function."""
        self.adam.build(list(variables))

    @property
    def variables_to_save(self) -> list[tf.Variable]:
        return list(self.adam.variables)

    def apply(self, grads: Sequence[tf.Tensor], variables: Sequence[tf.Variable]) -> tf.Tensor:
        """One step with gradients that are already those of the whole batch: under
        `tf.distribute` the caller all-reduces them first (clipping is not linear),
        so Adam's own cross-replica sum is skipped."""
        grads = [tf.convert_to_tensor(g) for g in grads]
        norm = tf.linalg.global_norm(grads)
        if self.clip:
            grads, _ = tf.clip_by_global_norm(grads, self.clip, use_norm=norm)
        if self.wd:
            self._decay(variables)
        self.adam.apply_gradients(zip(grads, variables), skip_gradients_aggregation=True)
        return norm

    def _decay(self, variables: Sequence[tf.Variable]) -> None:
        ctx = replicas.context()
        if ctx is None:
            for var in variables:
                var.assign((1 - self.wd) * var)
            return

        def decay_all(strategy):  # mirrored variables are written from cross-replica context
            for var in variables:
                strategy.extended.update(var, lambda v: v.assign((1 - self.wd) * v), group=False)

        ctx.merge_call(decay_all)
