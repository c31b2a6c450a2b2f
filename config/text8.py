# The paper's text8 model (Table 2): SEDD absorbing, 12 layers x 768, length 256.
# torchrun --standalone --nproc_per_node=8 train.py config/text8.py
# Token budget: 512 sequences x 256 characters = 131,072 characters per step; x 1,000,000 steps
# = 131B characters, ~1,460 epochs of the 90M-character train split.
out_dir = "out/text8"
dataset = "text8"
block_size = 256
batch_size = 64                   # per GPU per micro-step
gradient_accumulation_steps = 8   # global batch 64 x 8 = 512 sequences (1 micro-step each on 8 GPUs)
n_layer = 12
n_head = 12
n_embd = 768
cond_dim = 128
dropout = 0.1
learning_rate = 3e-4
warmup_iters = 2500
max_iters = 1_000_000
ema_decay = 0.9999
eval_interval = 10_000
eval_batches = 16
eval_n_t = 32
