"""What every config file shares: variant selection.

A config file is `get_config(arg=None)`: no argument gives the embedded default (runs anywhere,
no download); `arg` names a paper-scale variant (`--config=configs/NAME.py:VARIANT`). Variants
are functions that edit the default config; config files extend another by importing it as a
package (`from configs import simclr_randbit`).
"""
from typing import Callable, Mapping, Optional

import ml_collections


def with_variant(config: ml_collections.ConfigDict, arg: Optional[str],
                 variants: Mapping[str, Callable[[ml_collections.ConfigDict], None]],
                 name: str) -> ml_collections.ConfigDict:
  """`config` edited by variants[arg] (unchanged for arg None); an unknown arg is a ValueError
  naming the choices."""
  if arg is not None:
    if arg not in variants:
      raise ValueError(f"Unknown variant {arg!r} of configs/{name}.py: use none (the embedded "
                       f"default) or one of {', '.join(map(repr, variants))}.")
    variants[arg](config)
  return config
