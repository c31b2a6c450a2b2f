# A laptop-CPU text8 model for about an hour on 2 cores (54 min here: 2.614 bpc on val; word-like samples).
# python train.py config/text8_hour.py
# Budget: 5,000 steps x 16 x 256 = 20.5M characters (under a third of an epoch), 5.4M parameters.
out_dir = "out/text8_hour"
dataset = "text8"
block_size = 256
batch_size = 16
n_layer = 6
n_head = 4
n_embd = 256
cond_dim = 64
dropout = 0.0
learning_rate = 1e-3
warmup_iters = 200
max_iters = 5000
decay_lr = True
min_lr = 1e-4
ema_decay = 0.999
eval_interval = 1000
log_interval = 100
compile = False
