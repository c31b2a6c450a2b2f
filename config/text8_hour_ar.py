# The autoregressive twin of config/text8_hour.py (see config/text8_tiny_ar.py): the same network,
# causal and without noise, at the same data, steps, batch and optimiser.
# python train.py config/text8_hour_ar.py
include("text8_hour.py")
out_dir = "out/text8_hour_ar"
ar = True
