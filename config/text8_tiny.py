# A tiny absorbing SEDD on text8 that trains on a laptop CPU: 2.901 bits per character on val in
# 9 min 26 s with bf16 autocast on 2 AVX-512 cores of an Intel Xeon (3.412 at step 500, 3.079 at
# 1,500; 2.853 in 10 min 47 s on another such CPU, with an earlier train.py); 2.865 in 25 min 25 s in
# float32 on 2 AVX2 cores.
# python prepare.py text8 && python train.py config/text8_tiny.py
# Budget: 3,000 steps x 8 x 256 = 6.1M characters (a tenth of an epoch), 3.6M parameters.
# How the recipe was chosen (one seed each, same 128 val windows, each an override of this file):
#   batch 16 x 1,600 steps, cosine 1e-3 -> 1e-4, warmup 100: 2.936 +- 0.024 (11 min 21 s)
#   batch 8 x 3,200 steps, cosine 1e-3 -> 1e-4:                2.897 +- 0.027 (10 min 33 s)
#   batch 8 x 3,000 steps, cosine 1e-3 -> 1e-5:                2.950 +- 0.027 (11 min 28 s)
#   batch 8 x 3,000 steps, cosine 1e-3 -> 3e-4 (this file):    2.853 +- 0.028 (10 min 47 s)
# Half the batch for twice the steps wins at the same characters, and the run is far from converged,
# so late steps still need a large learning rate. Peak rates of 1.5e-3 to 3e-3 were no better at step
# 400 (or stuck on the unigram plateau); torch.compile gave no speed-up on the CPU (12,300 vs 12,200
# tokens/s), so eager mode.
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
eval_interval = 500
eval_batches = 16  # 16 x 8 = 128 val sequences
log_interval = 100
compile = False
