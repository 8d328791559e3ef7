"""The sweep runner's grid, overrides, seeds and report."""
import copy
import importlib
import json
import pathlib
import re

import numpy as np
import pytest
import yaml
from absl import flags

from cl_jax import paths, plots, train, validate
from cl_jax.analysis import results_doc, sweep
from configs import simclr_randbit
from tests.conftest import REPO, SMALL

SPEC = {"axes": {"loss": {"a": {"loss.temperature": 0.1}, "b": {"loss.temperature": 0.5}},
                 "bits": {"0": {"data.random_bits": 0}, "5": {"data.random_bits": 5}}},
        "overrides": {"train.num_steps": 7}}


def test_grid_is_the_product_of_axes_with_merged_overrides():
  points = sweep.grid(SPEC)
  assert [name for name, _, _ in points] == ["a_0", "a_5", "b_0", "b_5"]
  name, labels, overrides = points[3]
  assert labels == {"loss": "b", "bits": "5"}
  assert overrides == {"train.num_steps": 7, "loss.temperature": 0.5, "data.random_bits": 5}


def test_apply_overrides_sets_fields_and_rejects_unknown_ones():
  config = simclr_randbit.get_config()
  sweep.apply_overrides(config, sweep.grid(SPEC)[3][2])
  assert (config.loss.temperature, config.data.random_bits, config.train.num_steps) == (0.5, 5, 7)
  with pytest.raises(KeyError, match="no such field"):
    sweep.apply_overrides(config, {"loss.tau": 1.0})


def test_report_table_and_plot(tmp_path):
  rows = [sweep.aggregate(name, labels, {}, [{"seed": 0, "linear_eval": {
      "label": 0.9 - 0.1 * i, "bits": 0.6}}]) for i, (name, labels, _) in
          enumerate(sweep.grid(SPEC))]
  table = sweep.markdown_table(rows, SPEC["axes"], ["bits", "label"]).splitlines()
  assert table[0] == "| loss | bits | bits acc | label acc |"
  assert table[2] == "| a | 0 | 0.600 ± 0.000 (1) | 0.900 ± 0.000 (1) |"
  assert table[5] == "| b | 5 | 0.600 ± 0.000 (1) | 0.600 ± 0.000 (1) |"
  sweep.plot(rows, SPEC["axes"], "label", str(tmp_path / "plot.png"))
  assert (tmp_path / "plot.png").stat().st_size > 1000


def test_report_rows_are_mean_and_std_over_seeds(tmp_path):
  runs = [{"seed": s, "linear_eval": {"label": a}, "metrics": {"alignment": m}}
          for s, (a, m) in enumerate([(0.5, 1.0), (0.7, 2.0), (0.9, 3.0)])]
  row = sweep.aggregate("a_0", {"loss": "a", "bits": "0"}, {}, runs)
  assert row["n"] == 3 and row["runs"] == runs
  np.testing.assert_allclose(row["linear_eval"]["label"], 0.7)
  np.testing.assert_allclose(row["linear_eval_std"]["label"], 0.2)  # sample std, ddof=1
  np.testing.assert_allclose([row["metrics"]["alignment"], row["metrics_std"]["alignment"]],
                             [2.0, 1.0])
  single = sweep.aggregate("b_0", {"loss": "b", "bits": "0"}, {}, runs[:1])
  assert single["linear_eval_std"] == {"label": 0.0}
  assert sweep.markdown_table([row, single], {"loss": 0, "bits": 0}, ["label"]).splitlines()[2:] \
      == ["| a | 0 | 0.700 ± 0.200 (3) |", "| b | 0 | 0.500 ± 0.000 (1) |"]


def test_sweep_trains_every_seed_once_and_reports_error_bars(tmp_path, monkeypatch):
  """The sweep command end to end, with training replaced by a fake that records its calls:
  seeds 0..S−1 per point, finished seeds skipped on rerun, --seeds extends a sweep; runs that
  differ only in seed and temperature grouped, --parallel_runs at a time (default 1 on CPU)."""
  trained, groups = [], []

  def fake_train(config, run_dir):
    trained.append((run_dir.parent.name, config.seed))
    accuracy = 0.9 - 0.1 * config.data.random_bits / 5 + 0.01 * config.seed
    curve = [{"step": s, "label": accuracy * s / 4} for s in (2, 4)]
    result = {"step": 4, "linear_eval": {"label": accuracy},
              "online_probe": {"label": accuracy - 0.5}, "metrics": {"alignment": 1.0},
              "curve": curve, "curve_z": [{**p, "label": p["label"] / 2} for p in curve]}
    run_dir.mkdir(parents=True)
    paths.write_json(run_dir / "eval.json", result)
    plots.plot_embeddings(np.random.default_rng(0).normal(size=(40, 3)),
                               {"label": np.arange(40) % 3}, run_dir / "embeddings.png")
    return result

  def fake_train_runs(configs, run_dirs):
    train.check_group(configs)
    groups.append([(d.parent.name, c.seed) for c, d in zip(configs, run_dirs)])
    return [fake_train(c, d) for c, d in zip(configs, run_dirs)]

  monkeypatch.setattr(train, "train_and_evaluate_runs", fake_train_runs)
  spec_path = tmp_path / "spec.json"
  spec_path.write_text(json.dumps({**SPEC, "seeds": 2}))
  argv = ["sweep", "--config=configs/simclr_randbit.py", f"--sweep={spec_path}",
          f"--workdir={tmp_path / 'sweep'}", "--metric=online_probe/label"]

  def run(*extra):
    flags.FLAGS.unparse_flags()
    sweep.main(flags.FLAGS([*argv, *extra]))

  run("--parallel_runs=4")
  assert sorted(trained) == sorted((p, s) for p in ("a_0", "a_5", "b_0", "b_5") for s in (0, 1))
  assert groups == [[("a_0", 0), ("a_0", 1), ("b_0", 0), ("b_0", 1)],   # τ and seeds vary
                    [("a_5", 0), ("a_5", 1), ("b_5", 0), ("b_5", 1)]]
  rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
  assert [r["name"] for r in rows] == ["a_0", "a_5", "b_0", "b_5"]
  assert [run["seed"] for run in rows[1]["runs"]] == [0, 1]
  np.testing.assert_allclose(rows[1]["linear_eval"]["label"], 0.805)
  np.testing.assert_allclose(rows[1]["linear_eval_std"]["label"], 0.01 / np.sqrt(2))
  np.testing.assert_allclose(rows[1]["online_probe"]["label"], 0.305)
  assert "| a | 5 | 0.805 ± 0.007 (2) | 0.305 ± 0.007 (2) |" in (
      tmp_path / "sweep" / "results.md").read_text()
  assert sweep.table_metrics(rows, sweep.accuracy_sections(simclr_randbit.get_config())) == [
      "label", "online_probe/label"]
  _, title, pivot = (tmp_path / "sweep" / "results.md").read_text().split("\n\n")
  assert title == "online_probe/label (mean ± std over seeds)"
  assert pivot.splitlines() == ["| loss \\ bits | 0 | 5 |", "|---|---|---|",
                       "| a | 0.405 ± 0.007 | 0.305 ± 0.007 |",
                       "| b | 0.405 ± 0.007 | 0.305 ± 0.007 |"]
  assert (tmp_path / "sweep" / "embeddings.png").stat().st_size > 10000
  for png in ("results.png", "curves.png", "curve_zs.png"):  # a plot per periodic evaluator
    assert (tmp_path / "sweep" / png).stat().st_size > 1000
  trained.clear()
  run()  # nothing left to train
  assert not trained
  groups.clear()
  run("--seeds=3")  # a third seed per point, the first two read back
  assert sorted(trained) == [(p, 2) for p in ("a_0", "a_5", "b_0", "b_5")]
  assert all(len(g) == 1 for g in groups) and len(groups) == 4  # CPU: one run at a time
  rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
  assert rows[0]["n"] == 3 and [run["seed"] for run in rows[0]["runs"]] == [0, 1, 2]
  flags.FLAGS.unparse_flags()

  # docs/results.md is generated from the sweep's results, commentary appended.
  docs = tmp_path / "docs" / "results"
  results_doc.add(tmp_path / "sweep", paths.workdir_path(docs))
  (docs / "sweep.md").write_text("Commentary.")
  (docs / "findings.md").write_text("- Bits suppress the digit (sweep).")
  text = results_doc.render(paths.workdir_path(docs))
  assert text.index("## Findings\n\n- Bits suppress the digit (sweep).") < text.index("## sweep")
  assert "## sweep" in text and "4 points × 3 seeds = 12 runs" in text
  assert "| a | 5 | 0.810 ± 0.010 (3) | 0.310 ± 0.010 (3) |" in text
  assert "| a | 0.410 ± 0.010 | 0.310 ± 0.010 |" in text and text.rstrip().endswith("Commentary.")
  # The probe curves: peak and last point per point and label (fake curves: accuracy·s/4 at
  # s = 2, 4, so the peak is the last point, at step 4), and the plot copied beside them.
  # Every periodic evaluator gets its table and plot (curve_z: half the curve's values).
  curve, curve_z = text.index("Probe curve `curve`"), text.index("Probe curve `curve_z`")
  assert "| a_5 | 0.810 ± 0.010 (step 4) → 0.810 ± 0.010 |" in text[curve:curve_z]
  assert "| a_5 | 0.405 ± 0.005 (step 4) → 0.405 ± 0.005 |" in text[curve_z:]
  for png in ("sweep_curves.png", "sweep_curve_zs.png"):
    assert (docs / png).stat().st_size > 1000


SWEEP_FILES = sorted((pathlib.Path(REPO) / "configs" / "sweeps").glob("*.json"))


def sweep_command(spec: dict):
  """The base config and its command-line overrides named by a sweep file's "Run: python -m
  cl_jax.analysis.sweep ..." line."""
  command = re.search(r"Run[^:]*: python -m cl_jax\.analysis\.sweep (.*)$", spec["description"])
  assert command, "the description ends with the command that runs the sweep"
  args = dict(arg[2:].split("=", 1) for arg in command.group(1).split())
  path, _, variant = args.pop("config").partition(":")
  module = path.removeprefix("configs/").removesuffix(".py")
  config = importlib.import_module(f"configs.{module}").get_config(variant or None)
  overrides = {k.removeprefix("config."): yaml.safe_load(v) for k, v in args.items()
               if k.startswith("config.")}  # typed as absl's config flags parse them
  return config, overrides, args


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_sweep_file_runs_valid_configs_and_says_how_to_run_it(path):
  spec_ = json.loads(path.read_text())
  base, overrides, args = sweep_command(spec_)
  assert args["sweep"] == f"configs/sweeps/{path.name}"
  assert not re.search(r"\bissue \d", spec_["description"], re.I)  # cites nothing outside the repo
  for _, _, point in sweep.grid(spec_):
    config = copy.deepcopy(base)
    sweep.apply_overrides(config, overrides)
    sweep.apply_overrides(config, point)
    validate.check_config(config, num_devices=1)


def test_long_class_collapse_sweep_smoke_run(tmp_path):
  """The class-collapse-vs-embedding-size sweep end to end (real training), its steps scaled down
  500×: SCL at the smallest embedding size, one seed (the t-SNE and metrics evaluators off); the
  run has its probe curve every `evals.curve.every_steps` and the report its curves.png."""
  spec_ = json.loads((pathlib.Path(REPO) / "configs/sweeps/class_collapse_embedding.json")
                     .read_text())
  assert spec_["overrides"]["train.num_steps"] >= 10 * 200  # ≥ 4× the 500-step sweep
  spec_["axes"] = {"loss": {"scl": spec_["axes"]["loss"]["scl"]},
                   "embed_dim": {"4": spec_["axes"]["embed_dim"]["4"]}}
  spec_["overrides"].update({**SMALL, "train.num_steps": 4, "train.log_every_steps": 2,
                             "train.checkpoint_every_steps": 2, "evals.curve.every_steps": 2,
                             "evals.embeddings.at_end": False, "evals.metrics.at_end": False})
  spec_path = tmp_path / "spec.json"
  spec_path.write_text(json.dumps(spec_))
  flags.FLAGS.unparse_flags()
  sweep.main(flags.FLAGS(["sweep", "--config=configs/supcon_joint.py", f"--sweep={spec_path}",
                          f"--workdir={tmp_path / 'sweep'}", "--metric=subclass", "--seeds=1"]))
  rows = json.loads((tmp_path / "sweep" / "results.json").read_text())
  (row,) = rows
  (run,) = row["runs"]
  assert row["name"] == "scl_4" and "metrics" not in run
  assert [point["step"] for point in run["curve"]] == [0, 2, 4]
  assert set(run["curve"][0]) >= {"label", "subclass", "bits"}
  assert (tmp_path / "sweep" / "curves.png").stat().st_size > 1000
