"""Config files that extend another config file of the same folder."""
import importlib.util
import os


def sibling(config_file: str, name: str):
  """The module configs/<name>.py beside `config_file` (pass `__file__`), imported by path so
  that config files work from any working directory and without `configs` on sys.path."""
  path = os.path.join(os.path.dirname(os.path.abspath(config_file)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"cl_jax_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module
