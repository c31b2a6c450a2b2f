# The lab-session toy: the Markov-chain language of `python prepare.py toy`, whose entropy is known
# exactly, so the validation bound can be watched closing in on the truth (and staying above it).
# python prepare.py toy && python train.py config/toy.py
# Measured here (2 cores, Intel Xeon with AVX-512, float32 as set below, torch 2.13): 1,500 steps in
# 1 min 46 s (median of the five runs, 103 to 108 s). The final bound (512 val windows, 16 times each)
# against the entropy 3.0838, per seed: 1337 3.0817, --seed=1 3.0514, 2 3.0867, 3 3.0792, 4 3.0820,
# all within 0.04. That estimate is noisy (seed 1 dips 0.03 below the entropy); on all 1,562 val
# windows with 64 times each (--init_from=resume --eval_only=True --eval_batches=0 --eval_n_t=64,
# 70 s) the five read 3.0925, 3.0875, 3.0887, 3.0867, 3.0888: 0.003 to 0.009 above, as a bound must.
# With --noise=geometric (seed 1337): 3.0450, and 3.0881 on all windows: the same as log-linear here.
# The recipe before (4 heads, learning rate 3e-3, warmup 50) stalled 0.15 to 0.27 above the entropy on
# some seeds and CPUs; 8 heads and a gentler start found the structure on every seed tried.
out_dir = "out/toy"
dataset = "toy"
block_size = 64
batch_size = 32
n_layer = 2
n_head = 8
n_embd = 128
cond_dim = 32
dropout = 0.0
learning_rate = 1.5e-3
warmup_iters = 200
max_iters = 1500
decay_lr = True
min_lr = 1.5e-4
ema_decay = 0.99
eval_interval = 500
eval_batches = 16  # 16 x 32 = 512 val windows
eval_n_t = 16
sample_steps = 64
log_interval = 50
dtype = "float32"
compile = False
