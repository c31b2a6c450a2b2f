# SEDD Uniform at the budget of config/text8_tiny.py: every token jumps to any token instead of MASK
# (the paper's SEDD Uniform); everything else as in text8_tiny.
# python train.py config/text8_tiny_uniform.py
out_dir = "out/text8_tiny_uniform"
graph = "uniform"
dataset = "text8"
block_size = 256
batch_size = 8
n_layer = 4
n_head = 4
n_embd = 256
cond_dim = 64
dropout = 0.0
learning_rate = 1e-3
warmup_iters = 200
max_iters = 3000
decay_lr = True
min_lr = 3e-4
ema_decay = 0.999
eval_interval = 1500
eval_batches = 16  # 16 x 8 = 128 val sequences
log_interval = 100
compile = False
