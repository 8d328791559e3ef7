"""Config specs: every choice (loss, encoder, optimizer, scene, evaluator) declares the config
fields it reads and their checks; `check_choice` validates a config section against them.

A field belongs to the choices that read it. The other choices of the same selector ignore it;
those fields stay in the config (so `--config.loss.name=...` can switch methods on the command
line), but a field that switches an effect on (`off` given: e.g. `loss.ifm_epsilon` ≠ 0) and is set
on a choice that ignores it is refused — it would silently change nothing.
"""
import dataclasses
from typing import Any, Callable, Mapping, Optional


class UserError(Exception):
  """An error whose message is the whole story for the user (entry points exit 1 with it, no
  traceback): bad input, data that is not there, a diverged run."""


class ConfigError(UserError, ValueError):
  """An invalid experiment config: the message names the field, the value and what is valid."""


_NO_OFF = object()


@dataclasses.dataclass(frozen=True)
class Field:
  """A config field: `ok(value)` must hold, else `requirement` is reported ("must be > 0").
  `off`: the value with which a choice that ignores the field loses nothing."""
  requirement: str = ""
  ok: Callable[[Any], bool] = lambda value: True
  off: Any = _NO_OFF


def positive() -> Field:
  return Field("must be > 0", lambda v: v > 0)


def at_least(low, **kwargs) -> Field:
  return Field(f"must be >= {low}", lambda v: v >= low, **kwargs)


def in_range(low, high, *, closed_high=True, **kwargs) -> Field:
  bracket = "]" if closed_high else ")"
  return Field(f"must be in [{low}, {high}{bracket}",
               lambda v: low <= v <= high and (closed_high or v < high), **kwargs)


def one_of(*choices, **kwargs) -> Field:
  return Field(f"is not one of: {', '.join(map(str, choices))}", lambda v: v in choices, **kwargs)


def positive_int(what: str) -> Field:
  return Field(f"must be a positive number of {what}",
               lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0)


def round_up(n: int, multiple: int) -> int:
  """The smallest multiple of `multiple` that is >= n."""
  return -(-n // multiple) * multiple


def check_value(name: str, value, field: Field, explanation: str = ""):
  if not field.ok(value):
    raise ConfigError(f"{name}={value!r} {field.requirement}{explanation}.")


def check_choice(section, prefix: str, selector: str, choices: Mapping[str, Mapping[str, Field]],
                 start_from: Optional[Mapping[str, str]] = None):
  """Check `section[selector]` ∈ choices (listed in the mapping's order), then the fields the chosen one reads (present and valid),
  then that no field only other choices read is set to switch an effect on.
  `prefix` names the section in messages ('loss'); `start_from`: choice → the config file that
  defines its fields (named when a field is missing)."""
  chosen = section[selector]
  check_value(f"{prefix}.{selector}", chosen, one_of(*choices))
  fields = choices[chosen]
  missing = [name for name in fields if name not in section]
  if missing:
    hint = (f"; start from configs/{start_from[chosen]}, which defines them"
            if start_from and chosen in start_from else "")
    raise ConfigError(f"{prefix}.{selector}={chosen!r} needs {prefix}."
                      f"{f', {prefix}.'.join(missing)}{hint}.")
  for name, field in fields.items():
    check_value(f"{prefix}.{name}", section[name], field)
  readers = {}
  for choice, choice_fields in choices.items():
    for name, field in choice_fields.items():
      readers.setdefault(name, ([], field))[0].append(choice)
  for name, (names, field) in sorted(readers.items()):
    if (name not in fields and name in section and field.off is not _NO_OFF
        and section[name] != field.off):
      raise ConfigError(
          f"{prefix}.{name}={section[name]!r} has no effect with {prefix}.{selector}={chosen!r}: "
          f"only {', '.join(repr(n) for n in names)} read it. Set {prefix}.{name}={field.off!r}, "
          f"or choose one of those.")


def apply_overrides(config, overrides: dict):
  """Set dotted fields of `config` ({'loss.prior': 'gaussian'}), as sweeps and tests do;
  unknown fields are an error (a KeyError naming the override)."""
  for dotted, value in overrides.items():
    *path, field = dotted.split(".")
    node = config
    for p in path:
      node = node[p]
    if field not in node:
      raise KeyError(f"Override {dotted!r}: the config has no such field.")
    node[field] = value
