"""The sweep runner's grid, overrides and report."""
import pytest

from cl_jax.analysis import sweep
from configs import simclr_randbit

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
  rows = [{"point": labels, "linear_eval": {"label": 0.9 - 0.1 * i, "bits": 0.6}}
          for i, (_, labels, _) in enumerate(sweep.grid(SPEC))]
  table = sweep.markdown_table(rows, SPEC["axes"], ["bits", "label"]).splitlines()
  assert table[0] == "| loss | bits | bits acc | label acc |"
  assert table[2] == "| a | 0 | 0.600 | 0.900 |" and table[5] == "| b | 5 | 0.600 | 0.600 |"
  sweep.plot(rows, SPEC["axes"], "label", str(tmp_path / "plot.png"))
  assert (tmp_path / "plot.png").stat().st_size > 1000
