"""Small-model ablations: each sweep job in its own process, reports over a sweep folder, scaling fits."""
