# A tiny absorbing SEDD on text8 that trains on a laptop CPU in about 10 minutes (2.853 bpc on val here).
# python prepare.py text8 && python train.py config/text8_tiny.py
# Budget: 3,000 steps x 8 x 256 = 6.1M characters (a tenth of an epoch), 3.6M parameters.
# Measured choices (README, "text8: the 10-minute laptop model"): batch 8 beats batch 16 at the same
# characters (2.897 vs 2.936 bpc), and a cosine that ends at 3e-4 beats one ending at 1e-4 or 1e-5: the
# run is far from converged, so late steps still need a large learning rate.
out_dir = "out/text8_tiny"
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
