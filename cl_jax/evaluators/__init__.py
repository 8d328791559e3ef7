"""Evaluators: what is measured on the encoder, declared in the config, run when due.

  config.evals.NAME = dict(type=TYPE, every_steps=E, at_end=True, **fields of TYPE)

An evaluator is a function (context, cfg) → {key: float}: `context` gives the model, its variables,
the data, the config, the mesh, the workdir and the step (and the frozen features, extracted once
per step and shared); `cfg` is its config entry. It runs every `every_steps` steps (0: never
during training; a fresh run also at step 0, so a curve starts at the initial encoder) and, when
`at_end` (default True), after the last step. Its results land in
eval.json under NAME — a dict for an at-end evaluator, a curve [{"step": s, key: value, ...}] for a
periodic one (kept in <workdir>/NAME.json and NAME.png as training goes, resumable) — and in
TensorBoard as NAME/key. Evaluators that only write files (PNGs) return {}.

A new evaluation is one module with `evaluate(context, cfg)` and `FIELDS` (its config fields and
their checks), entered in `EVALUATORS`.
"""
import dataclasses
import time
from typing import Any, Callable, Mapping, NamedTuple, Optional

import jax
from absl import logging

from cl_jax import evaluate as evaluation
from cl_jax import paths, plots, spec
from cl_jax.evaluators import embeddings, kmeans, knn, linear, metrics, online


class Evaluator(NamedTuple):
  evaluate: Callable[[Any, Any], dict]
  fields: Mapping[str, spec.Field] = {}
  title: Optional[Callable[[Any], str]] = None  # per-label test accuracies: their table heading


def _from_module(module) -> Evaluator:
  return Evaluator(module.evaluate, module.FIELDS, getattr(module, "title", None))


# type → evaluator. Tables list accuracy evaluators in this order (ConfigDicts sort their keys).
EVALUATORS = {name: _from_module(module) for name, module in [
    ("linear", linear), ("online", online), ("knn", knn), ("metrics", metrics),
    ("embeddings", embeddings), ("kmeans", kmeans)]}


def in_table_order(evals_config) -> list:
  """The names of `evals_config`'s evaluators, ordered by their type's place in EVALUATORS."""
  order = {t: i for i, t in enumerate(EVALUATORS)}
  return sorted(evals_config, key=lambda name: order.get(evals_config[name].type, len(order)))

SCHEDULE_FIELDS = {"every_steps": spec.at_least(0), "at_end": spec.Field()}


def check(evals_config):
  """Raise `spec.ConfigError` for an unknown evaluator type or a bad field of one."""
  for name, cfg in evals_config.items():
    if "type" not in cfg:
      raise spec.ConfigError(f"evals.{name} has no type: one of {', '.join(EVALUATORS)}.")
    spec.check_choice(cfg, f"evals.{name}", "type",
                      {t: e.fields for t, e in sorted(EVALUATORS.items())})
    for field, check_field in SCHEDULE_FIELDS.items():
      if field in cfg:
        spec.check_value(f"evals.{name}.{field}", cfg[field], check_field)


class GroupFeatures:
  """The frozen features of every run of a group at one step, extracted together on first use:
  the data is read once and encoded for all runs by one vmapped program
  (`evaluate.extract_train_and_test`). `variables` carry a leading run axis."""

  def __init__(self, model, variables, train_split, test_split, configs, mesh):
    self._extract = lambda: evaluation.extract_train_and_test(
        model, variables, train_split, test_split, configs, mesh)
    self._features = None

  def __call__(self, run: int):
    """(train, test) `evaluate.Features` of run `run`."""
    if self._features is None:
      self._features = self._extract()
    return self._features[run]


@dataclasses.dataclass
class Context:
  """What an evaluator reads at one step: one run's model variables, data, config, mesh, workdir
  and step. `group` (with this run's index `run`) shares the feature extraction with the other
  runs of a vmapped group; without it the context extracts this run's features alone."""
  model: Any
  variables: Any
  train_split: Any
  test_split: Any
  config: Any
  mesh: Any
  workdir: Any
  step: int
  group: Optional[GroupFeatures] = None
  run: int = 0

  def __post_init__(self):
    if self.group is None:
      self.group = GroupFeatures(self.model, jax.tree.map(lambda a: a[None], self.variables),
                                 self.train_split, self.test_split, [self.config], self.mesh)
      self.run = 0

  def features(self):
    """(train, test) `evaluate.Features` of the un-augmented images, extracted once."""
    return self.group(self.run)


class Evaluations:
  """The evaluators of `config.evals`: when they are due, and their results — the one place that
  lays out eval.json (`results`) and their TensorBoard scalars."""

  def __init__(self, evals_config, workdir, start_step: int):
    self.config = evals_config
    self.workdir = workdir
    self.final = {}
    self.curves = {}  # periodic evaluators: points up to the resumed step are read back
    for name, cfg in evals_config.items():
      if cfg.get("every_steps", 0):
        path = workdir / f"{name}.json"
        points = paths.read_json(path) if start_step and path.exists() else []
        self.curves[name] = [p for p in points if p["step"] <= start_step]

  def due(self, step: int, last: bool) -> list:
    """During training (`last` False) the periodic evaluators whose step it is; after the last
    step, those that run at the end."""
    if last:
      return [name for name, cfg in self.config.items() if cfg.get("at_end", True)]
    return [name for name, cfg in self.config.items()
            if cfg.get("every_steps", 0) and step % cfg.every_steps == 0]

  def run(self, step: int, last: bool, context: Callable[[], Context], writer):
    """Run the evaluators due at `step` (`last`: the final step) on `context()`."""
    names = self.due(step, last)
    if not names:
      return
    ctx = context()
    for name in names:
      cfg, started = self.config[name], time.time()
      result = EVALUATORS[cfg.type].evaluate(ctx, cfg)
      logging.info("Evaluator %s (%s) at step %d: %.1f s.", name, cfg.type, step,
                   time.time() - started)
      writer.write_scalars(step, {f"{name}/{k}": v for k, v in result.items()})
      if name in self.curves:  # a point per step (a resumed or final run may redo the last one)
        self.curves[name] = [p for p in self.curves[name] if p["step"] != step]
        self.curves[name].append({"step": step, **result})
        if jax.process_index() == 0:
          paths.write_json(self.workdir / f"{name}.json", self.curves[name])
          plots.plot_curves({self.workdir.name: [self.curves[name]]},
                            self.workdir / f"{name}.png", title=self._title(cfg) or name)
      elif result:
        self.final[name] = result
    writer.flush()

  def results(self) -> dict:
    """eval.json's entries: NAME → the at-end dict, or the curve of a periodic evaluator."""
    return {**self.final, **{name: points for name, points in self.curves.items() if points}}

  def _title(self, cfg) -> Optional[str]:
    title = EVALUATORS[cfg.type].title
    return title(cfg) if title else None

  def log_summary(self, step: int):
    """Log the per-label test accuracies as one table, a column per accuracy evaluator."""
    columns = [(self._title(self.config[name]), self.final[name])
               for name in in_table_order(self.config)
               if name in self.final and self._title(self.config[name])]
    if not columns:
      return
    labels = list(dict.fromkeys(label for _, result in columns for label in result))
    rows = [f"  {label:<14} " + " | ".join(f"{result[label]:.4f}" for _, result in columns
                                           if label in result) for label in labels]
    logging.info("Test accuracy at step %d (%s):\n%s", step,
                 " | ".join(title for title, _ in columns), "\n".join(rows))
