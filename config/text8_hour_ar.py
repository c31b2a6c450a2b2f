# The autoregressive twin of config/text8_hour.py (see config/text8_tiny_ar.py): the same network,
# causal and without noise, at the same data, steps, batch and optimiser.
# Measured: 1.750 +- 0.031 bits per character on val in 43 min 36 s with bf16 autocast on 2 AVX-512
# cores of an Intel Xeon (2.190 at step 1,000, 1.958 at 3,000, 1.831 at 8,000, 1.780 at 12,000):
# 0.777 ahead of text8_hour's 2.527, against 0.953 at text8_tiny's budget.
# python train.py config/text8_hour_ar.py
include("text8_hour.py")
out_dir = "out/text8_hour_ar"
ar = True
