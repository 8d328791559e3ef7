"""Training objectives: how each method turns a batch of two views into its contrastive loss.

The training loop knows one interface, `Objective`:

- `init_state(model, variables, key)` → the method's own state, kept in `TrainState.objective_state`
  and checkpointed with it (None for every method but MoCo);
- `loss(model, params, batch_stats, objective_state, batch, key, loss_config)` →
  `Output(loss, probe_logits, probe_labels, batch_stats, objective_state)`: the contrastive loss on
  the GLOBAL batch, the online probes' logits and their labels, the updated BatchNorm statistics,
  and the method's state after this step. `loss_config` is `config.loss` with the step's traced
  hyperparameters (the temperature) filled in.

Two kinds exist (docs/method.md §1, §3):
- two-view losses (SimCLR NT-Xent, its cross-view form, SCL, the joint loss, the generalized
  loss): the encoder sees both views as ONE batch [view1; view2] (BatchNorm over 2B), or, with
  `train.concat_views=False`, one view at a time (BatchNorm statistics per view; running averages
  updated by view 1 then view 2, as Keras does for two calls);
- MoCo-v2 (He et al. 2020; §1.7): queries from view 1, keys from view 2 through a momentum (EMA)
  key encoder, a FIFO queue of keys, shuffle-BN over `loss.bn_groups` slices.
"""
import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from cl_jax import losses, spec


class Output(NamedTuple):
  loss: jax.Array                 # the contrastive loss (scalar)
  probe_logits: dict              # label → [M, classes] online-probe logits
  probe_labels: dict              # label → [M] the labels those logits predict
  batch_stats: Any                # the model's updated BatchNorm statistics
  objective_state: Any            # the method's state after the step (None: none)


@dataclasses.dataclass(frozen=True)
class Objective:
  loss: Callable[..., Output]
  init_state: Callable[..., Any] = lambda model, variables, key: None


# ------------------------------------------------------------------------------------------------
# Two-view losses: name → loss of (z1, z2, batch, key, loss_config). `batch` holds the labels,
# `key` is the step's PRNG key (the generalized loss draws projections and prior samples).

def ifm_kwargs(cfg):
  """{ifm_epsilon, ifm_alpha} of a loss config, as keyword arguments for the losses."""
  return dict(ifm_epsilon=cfg.ifm_epsilon, ifm_alpha=cfg.ifm_alpha)


TWO_VIEW_LOSSES = {
    "ntxent": lambda z1, z2, batch, key, cfg: losses.ntxent(z1, z2, cfg.temperature,
                                                            **ifm_kwargs(cfg)),
    "ntxent_cross_view": lambda z1, z2, batch, key, cfg: losses.ntxent_cross_view(
        z1, z2, cfg.temperature, **ifm_kwargs(cfg)),
    "supcon": lambda z1, z2, batch, key, cfg: losses.supcon(
        z1, z2, batch[cfg.supervised_label], cfg.temperature, **ifm_kwargs(cfg)),
    "joint": lambda z1, z2, batch, key, cfg: losses.joint(
        z1, z2, batch[cfg.supervised_label], cfg.temperature, cfg.beta, **ifm_kwargs(cfg)),
    "generalized": lambda z1, z2, batch, key, cfg: losses.generalized(
        z1, z2, key, lam=cfg.lam, temperature=cfg.temperature, prior=cfg.prior,
        hidden_norm=cfg.hidden_norm, scale=cfg.scale),
}


def interleave(a: jax.Array, b: jax.Array) -> jax.Array:
  """Rows a_0, b_0, a_1, b_1, …: both views of a batch in one array whose rows stay on the devices
  that hold them (the concatenation [a; b] of batches sharded over devices moves half of the rows
  between devices: an all-to-all of the images and of their gradients at every step)."""
  return jnp.stack([a, b], axis=1).reshape(2 * a.shape[0], *a.shape[1:])


def deinterleave(x: jax.Array):
  """The inverse of `interleave`: (rows 0, 2, 4, …; rows 1, 3, 5, …)."""
  pairs = x.reshape(x.shape[0] // 2, 2, *x.shape[1:])
  return pairs[:, 0], pairs[:, 1]


def two_view(contrastive: Callable, concat_views: bool = True) -> Objective:
  """The objective of a two-view loss `contrastive(z1, z2, batch, key, loss_config)`."""

  def loss(model, params, batch_stats, objective_state, batch, key, loss_config) -> Output:
    del objective_state
    variables = {"params": params, "batch_stats": batch_stats}
    if concat_views:  # one pass over both views, BatchNorm statistics over all 2N images
      x = interleave(batch["view1"], batch["view2"])
      (_, z, logits), updated = model.apply(variables, x, train=True, mutable=["batch_stats"])
      z1, z2 = deinterleave(z)
    else:
      (_, z1, logits1), updated = model.apply(variables, batch["view1"], train=True,
                                              mutable=["batch_stats"])
      (_, z2, logits2), updated = model.apply({"params": params, **updated}, batch["view2"],
                                              train=True, mutable=["batch_stats"])
      logits = {k: interleave(logits1[k], logits2[k]) for k in logits1}
    labels = {name: jnp.repeat(batch[name], 2, axis=0) for name in logits}
    return Output(contrastive(z1, z2, batch, key, loss_config), logits, labels,
                  updated["batch_stats"], None)

  return Objective(loss=loss)


# ------------------------------------------------------------------------------------------------
# MoCo-v2

def momentum_update(key_params, params, m: float):
  """EMA of the key encoder (MoCo): θ_k ← m·θ_k + (1 − m)·θ_q."""
  return jax.tree.map(lambda k, q: m * k + (1.0 - m) * q, key_params, params)


def enqueue(queue: jax.Array, queue_ptr: jax.Array, keys: jax.Array):
  """FIFO: overwrite the oldest len(keys) rows (ring buffer; K must be a multiple of the global
  batch) → (queue, new pointer)."""
  queue = jax.lax.dynamic_update_slice(queue, keys.astype(queue.dtype), (queue_ptr, 0))
  return queue, (queue_ptr + keys.shape[0]) % queue.shape[0]


def grouped_apply(model, variables, x, groups: int):
  """`model` in training mode on `groups` equal consecutive slices of the batch x, each slice
  normalised by its own BatchNorm statistics (a vmap over slices: the per-GPU BatchNorm of
  PyTorch DDP). Returns the outputs in batch order and the BatchNorm running averages averaged
  over the slices: m·old + (1 − m)·mean_g(stats_g)."""
  if groups == 1:
    return model.apply(variables, x, train=True, mutable=["batch_stats"])
  slices = x.reshape(groups, x.shape[0] // groups, *x.shape[1:])
  outputs, updated = jax.vmap(
      lambda xs: model.apply(variables, xs, train=True, mutable=["batch_stats"]))(slices)
  return (jax.tree.map(lambda o: o.reshape(-1, *o.shape[2:]), outputs),
          jax.tree.map(lambda s: s.mean(axis=0), updated))


def moco_bn_groups(loss_config, num_devices: int) -> int:
  """MoCo's shuffle-BN groups: loss.bn_groups, or (0) one per device and at least 2."""
  return loss_config.bn_groups or max(2, num_devices)


def moco(queue_size: int, bn_groups: int) -> Objective:
  """MoCo-v2 with a queue of `queue_size` keys and shuffle-BN over `bn_groups` slices.

  Each step, before the forward pass, the key encoder moves towards the query encoder
  (`momentum_update` with m = loss.momentum, as in MoCo's forward). Queries: view 1 through the
  model, BatchNorm per slice in batch order. Keys: view 2 through the key encoder after a random
  permutation of the batch (undone after), so a query and its positive key never share BatchNorm
  statistics (He et al. 2020). Loss: `losses.moco_infonce` (+ IFM). The keys of this batch are
  then enqueued. State: {params, batch_stats} of the key encoder, the queue [K, d], its pointer.
  """

  def init_state(model, variables, key):
    queue = jax.random.normal(key, (queue_size, model.head.embed_dim))
    return {"params": variables["params"], "batch_stats": variables["batch_stats"],
            "queue": losses.l2_normalize(queue), "queue_ptr": jnp.zeros((), jnp.int32)}

  def loss(model, params, batch_stats, state, batch, key, loss_config) -> Output:
    n = batch["view1"].shape[0]
    key_params = momentum_update(state["params"], jax.lax.stop_gradient(params),
                                 loss_config.momentum)
    (_, z, logits), updated = grouped_apply(
        model, {"params": params, "batch_stats": batch_stats}, batch["view1"], bn_groups)
    shuffle = jax.random.permutation(jax.random.fold_in(key, 0x5B), n)
    (_, shuffled_keys, _), key_updated = grouped_apply(
        model, {"params": key_params, "batch_stats": state["batch_stats"]},
        batch["view2"][shuffle], bn_groups)
    keys = jnp.zeros_like(shuffled_keys).at[shuffle].set(shuffled_keys)  # un-shuffle
    keys = losses.l2_normalize(jax.lax.stop_gradient(keys))
    contrastive = losses.moco_infonce(z, keys, state["queue"], loss_config.temperature,
                                      **ifm_kwargs(loss_config))
    queue, queue_ptr = enqueue(state["queue"], state["queue_ptr"], keys)
    new_state = {"params": key_params, "batch_stats": key_updated["batch_stats"],
                 "queue": queue, "queue_ptr": queue_ptr}
    return Output(contrastive, logits, {name: batch[name] for name in logits},
                  updated["batch_stats"], new_state)

  return Objective(loss=loss, init_state=init_state)


# ------------------------------------------------------------------------------------------------

def _two_view(name: str):
  return lambda config, num_devices: two_view(TWO_VIEW_LOSSES[name], config.train.concat_views)


# loss.name → the objective of a config on `num_devices` devices.
OBJECTIVES = {
    **{name: _two_view(name) for name in TWO_VIEW_LOSSES},
    "moco": lambda config, num_devices: moco(config.loss.queue_size,
                                             moco_bn_groups(config.loss, num_devices)),
}


# The fields of config.loss each objective reads (validated before anything compiles).
_IFM = {"ifm_epsilon": spec.at_least(0, off=0.0), "ifm_alpha": spec.at_least(0)}
_SUPERVISED = {"supervised_label": spec.Field()}  # a label of the data (validate.check_data)
FIELDS = dict(sorted({
    "ntxent": _IFM,
    "ntxent_cross_view": _IFM,
    "supcon": {**_IFM, **_SUPERVISED},
    "joint": {**_IFM, **_SUPERVISED, "beta": spec.in_range(0, 1)},
    "generalized": {"lam": spec.at_least(0), "prior": spec.one_of(*losses.PRIORS),
                    "hidden_norm": spec.Field(), "scale": spec.positive()},
    "moco": {**_IFM, "momentum": spec.in_range(0, 1, closed_high=False),
             "queue_size": spec.positive(), "bn_groups": spec.at_least(0)},
}.items()))
# The config file that defines a choice's fields.
CONFIG_FILES = {"supcon": "supcon_joint.py", "joint": "supcon_joint.py",
                "generalized": "generalized_losses.py", "moco": "moco_ifm.py"}


def create(config: ml_collections.ConfigDict, num_devices: int) -> Objective:
  """The objective named by config.loss.name."""
  return OBJECTIVES[config.loss.name](config, num_devices)
