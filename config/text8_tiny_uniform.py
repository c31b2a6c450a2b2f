# SEDD Uniform at the budget of config/text8_tiny.py: every token jumps to any token instead of MASK
# (the paper's SEDD Uniform); everything else as in text8_tiny.
# python train.py config/text8_tiny_uniform.py
include("text8_tiny.py")
out_dir = "out/text8_tiny_uniform"
graph = "uniform"
