"""Plugins: strategies, callbacks and attention backends that Hydra instantiates by `_target_`."""
