# SEDD medium on OpenWebText (paper Table 1; official louaaron/sedd-medium): 24 layers x 1024.
# torchrun --standalone --nproc_per_node=8 train.py config/owt_medium.py
# Token budget: 512 x 1024 = 524,288 tokens per step; x 400,000 steps = 210B tokens.
# Model FLOPs ~ 6 x 353M x 210B + attention ~ 5e20: about 8 days on 8 A100s at 30% MFU.
include("owt_small.py")
out_dir = "out/owt_medium"
batch_size = 16                    # per GPU per micro-step (bf16, 80 GB)
gradient_accumulation_steps = 32   # global batch 512 (4 micro-steps each on 8 GPUs)
n_layer = 24
n_head = 16
n_embd = 1024
