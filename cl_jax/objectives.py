"""Training objectives: how each method turns a batch of two views into its contrastive loss.

The training loop knows one interface, `Objective`:

- `init_state(model, variables, key)` → the method's own state, kept in `TrainState.objective_state`
  and checkpointed with it (None for every method but MoCo);
- `loss(model, params, batch_stats, objective_state, batch, key, loss_config)` →
  `Output(loss, probe_logits, probe_labels, batch_stats, objective_state)`: the contrastive loss on
  the GLOBAL batch, the online probes' logits and their labels, the updated BatchNorm statistics,
  and the method's state after this step. `loss_config` is `config.loss` with the step's traced
  hyperparameters (the temperature) filled in.

Three kinds exist (docs/method.md §1, §3):
- two-view losses (SimCLR NT-Xent, its cross-view form, SCL, the joint loss, the generalized
  loss, Barlow Twins, VICReg): the encoder sees both views as ONE batch [view1; view2] (BatchNorm
  over 2B), or, with `train.concat_views=False`, one view at a time (BatchNorm statistics per
  view; running averages updated by view 1 then view 2, as Keras does for two calls);
- predictor methods (BYOL, SimSiam; §1.9): the model's predictor q on the online branch, the
  target branch under a stop-gradient — for BYOL a target network, the EMA of the online one;
- MoCo-v2 (He et al. 2020; §1.7): queries from view 1, keys from view 2 through a momentum (EMA)
  key encoder, a FIFO queue of keys, shuffle-BN over `loss.bn_groups` slices.
"""
import dataclasses
from typing import Any, Callable, NamedTuple, Optional

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
    "barlow_twins": lambda z1, z2, batch, key, cfg: losses.barlow_twins(z1, z2, cfg.lambd),
    "vicreg": lambda z1, z2, batch, key, cfg: losses.vicreg(
        z1, z2, cfg.sim_coeff, cfg.std_coeff, cfg.cov_coeff),
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


class Views(NamedTuple):
  """The model in training mode on a batch's two views: head outputs z, predictor outputs p (None
  without), the probes' logits of both views interleaved, the updated BatchNorm statistics."""
  z1: jax.Array
  z2: jax.Array
  p1: Any
  p2: Any
  probe_logits: dict
  batch_stats: Any


def apply_views(model, variables, batch, concat_views: bool, predict: bool = False) -> Views:
  """Both views through `model`: as one batch (BatchNorm over all 2N images, rows interleaved) or,
  without `concat_views`, one view at a time (running averages updated by view 1, then view 2).
  `predict`: also the predictor's outputs (`ContrastiveModel.predict`)."""
  def apply(variables, x):
    return model.apply(variables, x, train=True, mutable=["batch_stats"],
                       method="predict" if predict else None)
  if concat_views:
    outputs, updated = apply(variables, interleave(batch["view1"], batch["view2"]))
    (z1, z2), logits = deinterleave(outputs[1]), outputs[2]
    p1, p2 = deinterleave(outputs[3]) if predict else (None, None)
  else:
    outputs1, updated = apply(variables, batch["view1"])
    outputs2, updated = apply({"params": variables["params"], **updated}, batch["view2"])
    z1, z2 = outputs1[1], outputs2[1]
    logits = {k: interleave(outputs1[2][k], outputs2[2][k]) for k in outputs1[2]}
    p1, p2 = (outputs1[3], outputs2[3]) if predict else (None, None)
  return Views(z1, z2, p1, p2, logits, updated["batch_stats"])


def probe_labels(batch, logits: dict) -> dict:
  """The labels of interleaved two-view probe logits: each example's label twice."""
  return {name: jnp.repeat(batch[name], 2, axis=0) for name in logits}


def two_view(contrastive: Callable, concat_views: bool = True) -> Objective:
  """The objective of a two-view loss `contrastive(z1, z2, batch, key, loss_config)`."""

  def loss(model, params, batch_stats, objective_state, batch, key, loss_config) -> Output:
    del objective_state
    views = apply_views(model, {"params": params, "batch_stats": batch_stats}, batch,
                        concat_views)
    return Output(contrastive(views.z1, views.z2, batch, key, loss_config), views.probe_logits,
                  probe_labels(batch, views.probe_logits), views.batch_stats, None)

  return Objective(loss=loss)


# ------------------------------------------------------------------------------------------------
# Predictor methods: SimSiam and BYOL (docs/method.md §1.9)

def simsiam(concat_views: bool = True) -> Objective:
  """SimSiam (Chen & He 2021): L = ½ D(p1, sg(z2)) + ½ D(p2, sg(z1)), D = `losses.negative_cosine`,
  p = q(z) the predictor's output, sg the stop-gradient. One network, no target copy."""

  def loss(model, params, batch_stats, objective_state, batch, key, loss_config) -> Output:
    del objective_state, key, loss_config
    v = apply_views(model, {"params": params, "batch_stats": batch_stats}, batch, concat_views,
                    predict=True)
    sg = jax.lax.stop_gradient
    contrastive = 0.5 * (losses.negative_cosine(v.p1, sg(v.z2)) +
                         losses.negative_cosine(v.p2, sg(v.z1)))
    return Output(contrastive, v.probe_logits, probe_labels(batch, v.probe_logits),
                  v.batch_stats, None)

  return Objective(loss=loss)


def byol_momentum(base: float, count, num_steps: int):
  """BYOL's target decay after `count` of `num_steps` steps: τ = 1 − (1 − τ_base)·(cos(π·count /
  num_steps) + 1)/2, from τ_base at the start to 1 at the end (Grill et al. 2020, §3.2)."""
  return 1.0 - (1.0 - base) * (jnp.cos(jnp.pi * count / num_steps) + 1.0) / 2.0


def byol(num_steps: int, concat_views: bool = True) -> Objective:
  """BYOL (Grill et al. 2020): L = Σ over the two directions of 2 − 2·cos(q(z_θ(v)), sg(z_ξ(v'))),
  i.e. 4 + 2·D(p1, z'2) + 2·D(p2, z'1) with D = `losses.negative_cosine`, z' the target network's
  projections (BatchNorm in training mode, its statistics its own).

  The target ξ is the EMA of the online parameters θ: before each step's forward pass,
  ξ ← τ·ξ + (1 − τ)·θ with τ = `byol_momentum`(loss.momentum, steps done, num_steps), the same
  update order as MoCo's key encoder (equal to BYOL's update after the optimizer step). State:
  {params, batch_stats} of the target and `count`, the steps done (optax's EMA keeps it too)."""

  def init_state(model, variables, key):
    del model, key
    return {"params": variables["params"], "batch_stats": variables["batch_stats"],
            "count": jnp.zeros((), jnp.int32)}

  def loss(model, params, batch_stats, state, batch, key, loss_config) -> Output:
    del key
    tau = byol_momentum(loss_config.momentum, state["count"], num_steps)
    target_params = momentum_update(state["params"], jax.lax.stop_gradient(params), tau)
    online = apply_views(model, {"params": params, "batch_stats": batch_stats}, batch,
                         concat_views, predict=True)
    target = apply_views(model, {"params": target_params, "batch_stats": state["batch_stats"]},
                         batch, concat_views)
    z1, z2 = (jax.lax.stop_gradient(z) for z in (target.z1, target.z2))
    contrastive = 4.0 + 2.0 * (losses.negative_cosine(online.p1, z2) +
                               losses.negative_cosine(online.p2, z1))
    new_state = {"params": target_params, "batch_stats": target.batch_stats,
                 "count": state["count"] + 1}
    return Output(contrastive, online.probe_logits, probe_labels(batch, online.probe_logits),
                  online.batch_stats, new_state)

  return Objective(loss=loss, init_state=init_state)


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
  return lambda config, num_devices, num_steps: two_view(TWO_VIEW_LOSSES[name],
                                                         config.train.concat_views)


# loss.name → the objective of a config on `num_devices` devices, trained for `num_steps` steps.
OBJECTIVES = {
    **{name: _two_view(name) for name in TWO_VIEW_LOSSES},
    "simsiam": lambda config, num_devices, num_steps: simsiam(config.train.concat_views),
    "byol": lambda config, num_devices, num_steps: byol(num_steps, config.train.concat_views),
    "moco": lambda config, num_devices, num_steps: moco(
        config.loss.queue_size, moco_bn_groups(config.loss, num_devices)),
}
# The methods whose model has a predictor (models.create_model(..., predictor=True)).
WITH_PREDICTOR = ("byol", "simsiam")
# The methods whose loss reads statistics of the batch: meaningless on a tiny global batch.
MIN_BATCH = {"barlow_twins": 16, "vicreg": 16}


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
    "byol": {"momentum": spec.in_range(0, 1, closed_high=False)},
    "simsiam": {},
    "barlow_twins": {"lambd": spec.at_least(0)},
    "vicreg": {"sim_coeff": spec.at_least(0), "std_coeff": spec.at_least(0),
               "cov_coeff": spec.at_least(0)},
}.items()))
# The config file that defines a choice's fields.
CONFIG_FILES = {"supcon": "supcon_joint.py", "joint": "supcon_joint.py",
                "generalized": "generalized_losses.py", "moco": "moco_ifm.py",
                **{name: "ssl_methods.py" for name in ("byol", "simsiam", "barlow_twins",
                                                       "vicreg")}}


def create(config: ml_collections.ConfigDict, num_devices: int,
           num_steps: Optional[int] = None) -> Objective:
  """The objective named by config.loss.name on `num_devices` devices; `num_steps`, the run's
  length, is needed by BYOL's momentum schedule only."""
  if config.loss.name == "byol" and not num_steps:
    raise ValueError("BYOL's target momentum schedule needs the run's num_steps.")
  return OBJECTIVES[config.loss.name](config, num_devices, num_steps)
