"""Hyper-parameters of reward-model training, PPO and the promotion gate, as plain dataclasses.

These dataclasses are the one source of the training defaults: ``rlhf_core.settings.Settings``
nests them (env ``RLHF_PPO__LR``, ``RLHF_REWARD__EPOCHS``), so the workers, the CLI, the benchmarks and
direct callers of ``run_ppo`` all start from the same values; the gate's flat ``RLHF_GATE_*`` settings
read their defaults from ``GateThresholds`` and ``GateSampling``. The round-size defaults (steps, batch,
learning rates, temperature, epochs) are the ones that met the learning benchmark's targets on the
built-in model (``benchmarks/results/LEARNING.md``).

The method follows Ziegler et al. 2019 ("Fine-Tuning Language Models from Human
Preferences", the lm-human-preferences code), Ouyang et al. 2022 (InstructGPT)
and Huang et al. 2023 ("The N Implementation Details of RLHF with PPO"); the
numbered items of ``IMPLEMENTATION_DETAILS.md`` say where each one is used.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RewardConfig:
    """Training of the reward model: Bradley-Terry on comparisons, pointwise logistic on thumbs ratings."""

    lr: float = 3e-4
    """Adam learning rate for backbone and scalar head."""
    epochs: int = 2
    """Passes over the training pairs per round (Ouyang et al. 2022 sec. C.2 use 1 on large data; 2 met the
    learning benchmark's targets on the built-in model's small rounds)."""
    batch_size: int = 8
    """Pairs per optimiser step (each pair gives a chosen and a rejected sequence)."""
    max_len: int = 128
    """Maximum tokens of prompt + response; the prompt's start is dropped first."""
    heldout_fraction: float = 0.2
    """Fraction of pairs + ratings held out (whole prompts) to report ``heldout_accuracy``."""
    seed: int = 0
    """Seed of the split, the shuffling and the head's initialisation."""
    rating_loss_weight: float = 1.0
    """lambda: weight of a rating's pointwise logistic loss relative to a comparison's Bradley-Terry loss."""
    rating_pairs: bool = False
    """Also turn the training prompts' ratings into same-prompt up/down pairs (off: the pointwise loss covers them)."""
    rating_pair_weight: float = 0.0
    """With ``rating_pairs``: weight of cross-prompt pairs of unpartnered ratings (0: none; detail 3)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip of each step."""
    device: str | None = None
    """``"cpu"``/``"cuda"``/``"cuda:N"``; ``None`` or ``"auto"`` picks CUDA when available (training/devices.py)."""


@dataclass
class PPOConfig:
    """PPO fine-tuning of the policy against a reward model with a KL penalty."""

    steps: int = 16
    """PPO iterations per round: each samples one rollout batch and optimises on it."""
    rollout_batch_size: int = 32
    """Prompts (= responses, rollouts) sampled per PPO iteration."""
    mini_batch_size: int = 4
    """Responses per gradient step; must divide ``rollout_batch_size``."""
    micro_batch_size: int = 0
    """Rows per forward/backward inside a mini-batch (gradient accumulation; LoRA rounds); 0: the whole
    mini-batch at once."""
    ppo_epochs: int = 4
    """Passes over each rollout batch (Huang et al. 2023, detail 14)."""
    lr: float = 5e-5
    """Adam learning rate of policy and value model."""
    adam_eps: float = 1e-5
    """Adam epsilon (1e-5 as in lm-human-preferences; detail 19)."""
    gamma: float = 1.0
    """Discount factor; 1 for episodic text generation (detail 10)."""
    lam: float = 0.95
    """GAE lambda (detail 10)."""
    cliprange: float = 0.2
    """PPO ratio clip epsilon (detail 12)."""
    cliprange_value: float = 0.2
    """Value-prediction clip around the rollout values (detail 13)."""
    vf_coef: float = 0.1
    """Weight of the value loss in the joint loss (detail 13)."""
    ent_coef: float = 0.0
    """Entropy bonus weight c_ent in L = L^CLIP + c_vf L^VF - c_ent H; 0 as in lm-human-preferences
    (detail 15). Raise it to hold diversity (distinct-n) against collapse."""
    diversity_floor: float | None = None
    """rho: hold each rollout batch's distinct-2 at >= rho x the SFT reference's (same batch size, token ids) with a
    per-token penalty lambda p_t on bigrams other responses of the batch repeat (p_t = (c - 1) / c for a bigram
    found c times), lambda raised while batches fall below the floor and lowered (to 0) while they are above:
    dual ascent (training/diversity.py). None (env `none`): no penalty."""
    diversity_lr: float = 1.0
    """eta: step of the floor's dual ascent, lambda += eta (rho - d(pi)/d(pi_ref)) per rollout batch."""
    repeat_coef_max: float = 1.0
    """Ceiling of lambda, in normalised reward per repeated bigram (scores have std 1 over the reference's samples)."""
    init_kl_coef: float = 0.15
    """Initial KL penalty coefficient beta (detail 8)."""
    adaptive_kl: bool = False
    """Adapt beta towards ``kl_target`` (Ziegler et al. 2019 eq. 2; detail 9)."""
    kl_target: float = 6.0
    """Target KL (nats per response) of the adaptive controller."""
    kl_horizon: int = 10000
    """Horizon (in responses) of the adaptive controller."""
    max_grad_norm: float = 1.0
    """Global gradient-norm clip of each step (detail 18)."""
    whiten_advantages: bool = True
    """Whiten advantages over the rollout batch (detail 11)."""
    normalize_reward: bool = True
    """Fix a gain/bias so SFT-reference RM scores on a fixed prompt set have mean 0, std 1 (detail 6)."""
    norm_samples: int = 64
    """Reference samples (one per prompt of the fixed set) that set the reward normalisation (detail 6)."""
    norm_seed: int = 0
    """Seed of the fixed normalisation prompt set and of its sampling; constant across rounds (detail 6)."""
    whiten_scores: bool = False
    """Additionally whiten the RM scores of every rollout batch (detail 6)."""
    missing_eos_penalty: float | None = -2.0
    """A response without EOS gets this (normalised) score instead of the RM's; None (env `none`): off (detail 7).

    -2: scores are normalised to mean 0, std 1 over SFT-reference samples (detail 6), so a
    truncated response scores like the worst ~2% of the reference's answers: never worth
    rambling into the token cap for, whatever the RM would have said about the cut text (which it
    never saw in training: it reads the last token, normally EOS). Larger magnitudes add nothing
    but value-function error and dominate the advantage whitening; -1 (lm-human-preferences)
    still beats a finished answer the RM dislikes."""
    max_new_tokens: int = 64
    """Longest rollout response during PPO (detail 4); also the promotion gate's sampling budget."""
    max_prompt_len: int = 96
    """Maximum prompt tokens; longer prompts keep their end."""
    temperature: float = 1.0
    """Rollout sampling temperature, also applied when scoring logprobs (detail 5). Keep it equal to the
    temperature clients sample at (the server's default is 1.0): PPO optimises the policy at this temperature;
    the promotion gate samples at it too."""
    kl_stop: float | None = None
    """Stop the current step's updates once approx-KL(old||new) exceeds this (detail 17)."""
    kl_budget: float | None = None
    """End the round's PPO at the first rollout batch whose mean KL to the reference (nats per response)
    exceeds this, undoing the update that produced its sampler: the round returns the last policy whose
    rollouts were within the budget (one copy of the weights is kept for it). None: off. The
    workers set it to ``RLHF_ROUND_KL_BUDGET_SHARE`` x ``RLHF_KL_BOUND``, so a round stops near the
    promotion gate's KL bound instead of overshooting it and being refused."""
    kl_budget_retries: int = 3  # 0 before: 0.786 -> 0.826 mean win rate, 15 rounds, 3 seeds (README)
    """On a rollout batch over ``kl_budget``: undo the update that produced it, multiply beta by
    ``kl_budget_backoff`` and carry on, up to this many batches in a row before the round ends (a dual-ascent
    step on the KL constraint: near the bound a round keeps improving reward at a tighter leash instead of
    ending at its first noisy crossing). 0: the round ends at the first crossing."""
    kl_budget_backoff: float = 2.0
    """Factor on beta after each over-budget batch that ``kl_budget_retries`` lets the round survive."""
    kl_budget_z: float = 0.0
    """Standard errors of evidence before a rollout batch counts as over the budget: its mean KL must clear the
    budget by ``z`` x its standard error (sd over the batch's responses / sqrt(B)) and the round's first batch
    by ``z`` standard errors of the difference. Per-batch means of 32 responses scatter by nats around a fixed
    policy's KL, so at 0 (a bare comparison of means) many crossings, and the retries' beta backoff, are noise."""
    kl_round_step: float | None = None
    """Most KL (nats per response) one round may add to its parent's (the round's first rollout batch's mean KL):
    the round's budget is min(``kl_budget``, KL_parent + this), held as ``kl_budget`` is (undo, retries). None:
    off, and a round may spend the whole budget at once (thumbs-only lineages reached the bound in one or two
    rounds, and every later round started at it)."""
    seed: int = 0
    """Seed of prompt order, sampling and minibatch permutations."""
    device: str | None = None
    """``"cpu"``/``"cuda"``/``"cuda:N"``; ``None`` or ``"auto"`` picks CUDA when available (training/devices.py)."""

    def __post_init__(self) -> None:
        if self.rollout_batch_size % self.mini_batch_size:
            raise ValueError("mini_batch_size must divide rollout_batch_size")
        if self.diversity_floor is not None and not 0 < self.diversity_floor <= 1:
            raise ValueError(f"diversity_floor must be in (0, 1] (a share of the reference's distinct-2), "
                             f"got {self.diversity_floor}")
        if self.diversity_lr < 0 or self.repeat_coef_max < 0:
            raise ValueError("diversity_lr and repeat_coef_max must be >= 0")


@dataclass(frozen=True)
class GateThresholds:
    """What a candidate must clear (each maps to an RLHF_GATE_* / RLHF_KL_BOUND setting)."""

    min_judge_accuracy: float = 0.55
    win_margin: float = 0.0
    min_win_rate: float = 0.5
    min_reward_gain: float = 0.0
    kl_bound: float = 10.0
    max_eos_drop: float = 0.1
    max_length_ratio: float = 3.0
    min_distinct_ratio: float = 0.55  # 0.6 before: worst seed 0.723 -> 0.805 (benchmarks/results/LEARNING.md)


@dataclass
class GateSampling:
    """How the gate measures (training/gate_eval.py samples with it): k samples per held-out prompt at
    the serving temperature and PPO's token budget, seeded; the one-sided confidence of the win-rate bound."""

    samples_per_prompt: int = 16  # 4 gave the bound too little power: 0.781 -> 0.822 mean win rate, 3 seeds
    temperature: float = 1.0
    max_new_tokens: int = 64
    max_prompt_len: int = 96
    batch_size: int = 32
    seed: int = 0
    confidence: float = 0.9
    n_boot: int = 2000
