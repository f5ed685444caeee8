"""The recipes compared in the chapter "What makes the digits sharp".

Each candidate changes the reference recipe (Adam at 2e-4, constant rate,
uniform t, L_simple, max pooling, no attention) in the named way; all keep
324,705 parameters, batch 128, the linear schedule with T = 1000 and
epsilon prediction. ``args`` are the extra ``python -m ddpm_core train`` flags.
"""

REFERENCE = ["--lr", "2e-4", "--ema-decay", "0.999"]
# Warm-up, cosine decay, gradient clipping and an EMA that warms up: the usual care for a short run.
TUNED = ["--lr", "1e-3", "--warmup-steps", "200", "--lr-decay", "cosine", "--grad-clip", "1.0",
         "--ema-decay", "0.999", "--ema-warmup"]
# Attention at 7x7 and the widths that keep the count at 324,705: 32, 40, 40 with a time embedding of 80.
ATTENTION = ["--channels", "32,40,40", "--time-embed-dim", "80", "--attention", "7"]

CANDIDATES = {
    "reference": {"what": "the reference recipe: Adam 2e-4, constant", "args": REFERENCE},
    "tuned": {"what": "lr 1e-3, 200 warm-up steps, cosine decay, clip 1.0, EMA warm-up", "args": TUNED},
    "tuned_attn7": {"what": "tuned + self-attention at 7x7 (widths 32,40,40, embedding 80)",
                    "args": TUNED + ATTENTION},
    "tuned_minsnr": {"what": "tuned + min-SNR-5 loss weighting", "args": TUNED + ["--loss-weighting", "min_snr"]},
    "tuned_lr2e-3": {"what": "tuned with peak lr 2e-3", "args": [*TUNED[:1], "2e-3", *TUNED[2:]]},
    "tuned_zero": {"what": "tuned + zero-initialised last convolutions", "args": TUNED + ["--zero-init"]},
}
