# The lab-session toy: the Markov-chain language of `python prepare.py toy`, whose entropy is known
# exactly, so the validation bound can be watched closing in on the truth (and staying above it).
# python prepare.py toy && python train.py config/toy.py
# Measured here (2 cores, AVX2, float32): 3.1723 +- 0.0127 bits per character against the entropy 3.0838
# (a gap of 0.089) after 1,500 steps in 2 min 50 s; 3.4414 at step 500, 3.3541 at 1,000. With --seed=1
# and --seed=2: gaps of 0.043 and 0.019; with --noise=geometric: 0.314.
out_dir = "out/toy"
dataset = "toy"
block_size = 64
batch_size = 32
n_layer = 2
n_head = 4
n_embd = 128
cond_dim = 32
dropout = 0.0
learning_rate = 3e-3
warmup_iters = 50
max_iters = 1500
decay_lr = True
min_lr = 3e-4
ema_decay = 0.99
eval_interval = 500
eval_batches = 16  # 16 x 32 = 512 val windows
eval_n_t = 16
sample_steps = 64
log_interval = 50
dtype = "float32"
compile = False
