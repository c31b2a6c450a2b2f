# A laptop-CPU text8 model for about an hour: 2.527 +- 0.032 bits per character on val in 53 min 46 s
# with bf16 autocast on 2 AVX-512 cores of an Intel Xeon (2.845 at step 3,000, 2.782 at 4,000, 2.647 at
# 8,000, 2.571 at 12,000; an earlier train.py: 2.529 in 54 min 59 s, 57.7% of sampled words real).
# python train.py config/text8_hour.py
# Budget: 16,000 steps x 8 x 256 = 32.8M characters (half an epoch), 3.6M parameters: text8_tiny's
# model and recipe, 5.3x longer. Other hour-long recipes did worse: 6 layers at batch 16 for 5,000
# steps reached 2.614; 6 layers at batch 8 left the unigram plateau late (step ~450) and had 3.61
# bits at step 1,000, where 4 layers had 3.2. 8,000 more steps at a constant 3e-4 reached 2.475.
include("text8_tiny.py")
out_dir = "out/text8_hour"
max_iters = 16000
eval_interval = 1000
