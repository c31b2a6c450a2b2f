# A laptop-CPU text8 model for about an hour on 2 cores (see the README for the measured BPC and a sample).
# python train.py config/text8_hour.py
# Budget: 10,000 steps x 8 x 256 = 20.5M characters (a third of an epoch), 5.4M parameters.
# The recipe of text8_tiny (batch 8, cosine from 1e-3 to 3e-4), two layers deeper and 3.3x longer.
out_dir = "out/text8_hour"
dataset = "text8"
block_size = 256
batch_size = 8
n_layer = 6
n_head = 4
n_embd = 256
cond_dim = 64
dropout = 0.0
learning_rate = 1e-3
warmup_iters = 200
max_iters = 10000
decay_lr = True
min_lr = 3e-4
ema_decay = 0.999
eval_interval = 2500
eval_batches = 16  # 16 x 8 = 128 val sequences
log_interval = 100
compile = False
