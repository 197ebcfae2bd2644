"""Distributed strategies chosen in `conf/strategy/` by `_target_`."""
