# SEDD Uniform at the budget of config/text8_tiny.py: every token jumps to any token instead of MASK,
# with the geometric schedule the paper pairs with it (log-linear, it says, "helps SEDD Absorb");
# everything else as in text8_tiny. Measured here (2 cores, AVX2, float32, train.py's own evaluation
# on 128 val windows): 3.579 +- 0.066 bits per character in 27 min 0 s; with --noise=loglinear
# instead, 3.222 +- 0.046 in 27 min 49 s: at this budget the log-linear schedule helps Uniform too.
# python train.py config/text8_tiny_uniform.py
include("text8_tiny.py")
out_dir = "out/text8_tiny_uniform"
graph = "uniform"
noise = "geometric"
