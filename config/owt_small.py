# SEDD small on OpenWebText (paper Table 1; official louaaron/sedd-small): absorbing, log-linear.
# python prepare.py owt && torchrun --standalone --nproc_per_node=8 train.py config/owt_small.py
# Token budget: 512 sequences x 1024 tokens = 524,288 tokens per step; x 400,000 steps = 210B
# tokens, ~23 epochs of OpenWebText's ~9B tokens. Model FLOPs ~ 6 x 124M x 210B ~ 1.6e20
# + attention 12 x 12 x 768 x 1024 x 210B ~ 2.4e19: ~1.8e20 FLOPs, about 3 days on 8 A100s at 30% MFU.
out_dir = "out/owt_small"
dataset = "openwebtext"
block_size = 1024
batch_size = 32                    # per GPU per micro-step (bf16, 80 GB A100/H100)
gradient_accumulation_steps = 16   # global batch 32 x 16 = 512 sequences (2 micro-steps each on 8 GPUs)
n_layer = 12
n_head = 12
n_embd = 768
cond_dim = 128
dropout = 0.1
learning_rate = 3e-4
warmup_iters = 2500
max_iters = 400_000
ema_decay = 0.9999
eval_interval = 10_000
eval_batches = 8
eval_n_t = 32
# uniform + geometric (SEDD Uniform): --graph=uniform --noise=geometric
