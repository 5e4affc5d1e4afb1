"""What an optimizer step trains on and at which learning rate, for drafter and fast-model training
alike. Both are pure functions of the step, so a resumed run (or another rank)
repeats exactly what an uninterrupted one does."""

import mlx.optimizers as optim
import numpy as np


def learning_rate_schedule(peak_lr: float, warmup_steps: int, total_steps: int, final_lr: float = 0.0):
    """Linear warmup over the first `warmup_steps` steps, from peak_lr / warmup_steps (no step is
    spent at 0) to `peak_lr`, then cosine decay to `final_lr` at `total_steps`."""
    decay = optim.cosine_decay(peak_lr, max(total_steps - warmup_steps, 1), final_lr)
    if warmup_steps == 0:
        return decay
    warmup = optim.linear_schedule(peak_lr / warmup_steps, peak_lr, max(warmup_steps - 1, 1))
    return optim.join_schedules([warmup, decay], [warmup_steps])


def epoch_order(seed: int, epoch: int, num_examples: int) -> np.ndarray:
    """The examples in a seeded order, a new one every epoch."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


def batch_of_step(seed: int, step: int, num_examples: int, batch_size: int) -> tuple[int, np.ndarray]:
    """The epoch of optimizer step `step` and the example indices of its batch: each epoch walks
    its `epoch_order` batch_size at a time; the examples left over at an epoch's end sit it out."""
    epoch, position = divmod(step, num_examples // batch_size)
    return epoch, epoch_order(seed, epoch, num_examples)[position * batch_size : (position + 1) * batch_size]
