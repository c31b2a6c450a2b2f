# A tiny absorbing SEDD on text8 that trains on a laptop CPU in about 11 minutes (2.936 bpc on val here).
# python prepare.py text8 && python train.py config/text8_tiny.py
out_dir = "out/text8_tiny"
dataset = "text8"
block_size = 256
batch_size = 16
n_layer = 4
n_head = 4
n_embd = 256
cond_dim = 64
dropout = 0.0
learning_rate = 1e-3
warmup_iters = 100
max_iters = 1600
decay_lr = True
min_lr = 1e-4
ema_decay = 0.999
eval_interval = 800
log_interval = 50
compile = False
