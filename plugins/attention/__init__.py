"""Optional GPU attention backends. Importing a module registers its backend; the library it wraps is
imported on first use, so a missing install fails with a clear message only when the backend runs.

    python train.py trainer=gpu 'imports=[lmstack.plugins.attention.flash_attn]' model.attention.backend=flash_attn
"""
