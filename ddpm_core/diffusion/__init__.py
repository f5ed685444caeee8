"""The maths of diffusion: what chapters 1 to 3 and 8 to 9 derive, and nothing else.

    schedule      the noise schedule beta_t and the closed forms of the forward process (chapters 1-2)
    unet          the noise-prediction network eps_theta(x_t, t), a small UNet (chapter 3)
    unet_variants that UNet with a class label, self-attention or a v / x_0 target, and build_unet (chapters 7, 9)
    objective     the training objective, Algorithm 1 of Ho et al. 2020 (chapter 2)
    sampling      the reverse process: one ancestral step and Algorithm 2 (chapter 2)
    ddim          fast deterministic or stochastic sampling with DDIM (chapter 8)
    dpm_solver    the second-order DPM-Solver++(2M) sampler (chapter 8)
    samplers      every sampler by name, with its options and defaults, and one generate
    seeds         the bookkeeping around the samplers' loops: per-sample seeds, eps_theta, the trajectory
    conditioning  the rules of conditional networks and classifier-free guidance (chapter 9)

May import: ``ddpm_core.utils`` only. Training, measurement and the command line build on this
layer; it knows nothing of them.
"""
