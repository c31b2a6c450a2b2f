# The autoregressive twin of config/text8_repeat.py: the same network, data prefix, steps and recipe.
# Measured (bf16 autocast, 2 cores of an AVX-512 Xeon, 28 min 54 s): best val 2.378 +- 0.045 bits per
# character at step 1,000 (8.2 epochs), then it memorises the prefix: 3.933 at 33 epochs, 7.387 +-
# 0.172 at the end (61 epochs), worse than guessing uniformly (4.755), with a training loss of 0.18.
# python train.py config/text8_repeat_ar.py
include("text8_repeat.py")
out_dir = "out/text8_repeat_ar"
ar = True
