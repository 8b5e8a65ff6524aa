"""Small helpers shared by the package: ``cli`` (the entrypoints' start, logging and one-line
errors), ``io`` (atomic writes), ``config`` (mapping → dataclass checks).

Import the submodules directly; this package imports nothing, so that ``vesselfm.utils.io`` or
``vesselfm.utils.config`` never pulls in Hydra.
"""
