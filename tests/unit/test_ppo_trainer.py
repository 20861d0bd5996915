"""End-to-end PPO on a 1-layer GPT-2 with a toy reward (vowels in the sequence)."""

import pytest
import torch
from tokenizers import Tokenizer, models
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from training.config import PPOConfig
from training.ppo_trainer import evaluate_policy, load_causal_lm, run_ppo
from training.reward_model import RewardModel

CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 :\n.,?!'"
PROMPTS = [f"hi {i}" for i in range(8)]
STEP_KEYS = {"mean_reward", "kl", "entropy", "clipfrac", "value_loss", "policy_loss", "kl_coef", "approxkl"}


def char_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for c in CHARS:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", unk_token="<unk>")


def tiny_gpt2(vocab_size: int, seed: int) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_layer=1, n_embd=32, n_head=2, n_positions=64,
                                      eos_token_id=1, bos_token_id=1, pad_token_id=0))


class VowelReward(RewardModel):
    """Toy reward: the number of lower-case vowels in the (prompt + response) sequence."""

    def forward(self, input_ids, attention_mask):
        vowels = torch.tensor(self.tokenizer.convert_tokens_to_ids(list("aeiou")), device=input_ids.device)
        return (torch.isin(input_ids, vowels) & attention_mask.bool()).float().sum(-1)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small models: threads only add contention (and keep runs reproducible)
    tok = char_tokenizer()
    policy_dir = tmp_path_factory.mktemp("policy")
    tiny_gpt2(len(tok.get_vocab()), 0).save_pretrained(policy_dir)
    tok.save_pretrained(policy_dir)
    yield tok, policy_dir
    torch.set_num_threads(threads)


def config(**kw) -> PPOConfig:
    base = dict(steps=8, rollout_batch_size=16, mini_batch_size=8, ppo_epochs=2, lr=1e-2, max_new_tokens=6,
                temperature=1.0, init_kl_coef=0.01, seed=0, device="cpu", max_prompt_len=32,
                missing_eos_penalty=None)  # 6-token toy responses rarely end: the EOS penalty would mask the reward
    return PPOConfig(**{**base, **kw})


def test_run_ppo_raises_reward_and_is_reproducible(setup):
    tok, policy_dir = setup
    rm = VowelReward(tiny_gpt2(len(tok.get_vocab()), 1).transformer, tok, 64)
    policy, hist = run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(), log=lambda s: None)
    assert len(hist) == 8 and STEP_KEYS <= hist[0].keys()
    rewards = [h["mean_reward"] for h in hist]
    assert sum(rewards[-2:]) / 2 > sum(rewards[:2]) / 2 + 1.0, rewards
    assert type(policy) is GPT2LMHeadModel  # a plain causal LM, no value head inside
    assert all(h["kl_coef"] == 0.01 for h in hist)

    policy2, hist2 = run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(), log=lambda s: None)
    assert hist2 == hist
    for (name, a), (_, b) in zip(policy.state_dict().items(), policy2.state_dict().items()):
        assert torch.equal(a, b), name

    ref = load_causal_lm(policy_dir, torch.device("cpu"), trainable=False)
    eval_cfg = config(rollout_batch_size=8, mini_batch_size=8)
    before = evaluate_policy(ref, ref, rm, tok, PROMPTS * 2, eval_cfg)
    after = evaluate_policy(policy, ref, rm, tok, PROMPTS * 2, eval_cfg)
    assert before["kl"] == 0.0 and after["kl"] > 0.0
    assert after["mean_reward"] > before["mean_reward"]


def test_kl_stop_adaptive_kl_and_real_reward_model(setup):
    tok, policy_dir = setup
    rm = RewardModel(tiny_gpt2(len(tok.get_vocab()), 2).transformer, tok, 64)
    cfg = config(steps=2, kl_stop=0.0, adaptive_kl=True, kl_target=0.001, kl_horizon=16, lr=1e-2)
    logs = []
    _, hist = run_ppo(policy_dir, policy_dir, rm, PROMPTS, cfg, log=logs.append)
    assert len(logs) == 2 and "mean_reward=" in logs[0]
    assert hist[0]["updates"] == 1.0 and hist[0]["early_stopped"] == 1.0
    error = min(max(hist[0]["kl"] / 0.001 - 1.0, -0.2), 0.2)  # Ziegler et al. eq. 2, n_steps = horizon
    assert hist[1]["kl_coef"] == pytest.approx(hist[0]["kl_coef"] * (1 + error))


def test_kl_budget_ends_the_round_before_the_policy_overshoots(setup):
    """The same run as above with a KL budget and no retries: the first rollout batch past the budget ends the round,
    and the update that produced its sampler is undone: the round returns the last policy whose
    rollouts were within the budget (the policy after 2 updates, bit for bit)."""
    tok, policy_dir = setup
    rm = VowelReward(tiny_gpt2(len(tok.get_vocab()), 1).transformer, tok, 64)
    _, free = run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(), log=lambda s: None)
    budget = free[3]["kl"] - 1e-6  # the unconstrained run's KL at step 3 (> steps 0..2, as it grows)
    assert all(h["kl"] < budget for h in free[:3]), [h["kl"] for h in free]
    assert free[0]["kl_se"] == 0.0 and all(h["kl_se"] > 0.0 for h in free[1:])  # pi = pi_ref only at step 0
    logs = []
    capped_policy, capped = run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(kl_budget=budget, kl_budget_retries=0),
                                    log=logs.append)
    assert capped == free[:2]  # steps 0 and 1 kept; step 2's update (its policy sampled step 3) undone
    assert "round ends with the policy of step 2" in logs[-1]
    two_steps, _ = run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(steps=2), log=lambda s: None)
    for (name, a), (_, b) in zip(capped_policy.state_dict().items(), two_steps.state_dict().items()):
        assert torch.equal(a, b), name


def test_kl_budget_retries_go_on_at_a_tighter_beta_instead_of_ending_the_round(setup):
    """The run above with 3 retries: at the first crossing the update is undone as before, but the round
    samples again from the restored policy with beta doubled and keeps training; every batch it trained on
    was within the budget."""
    tok, policy_dir = setup
    rm = VowelReward(tiny_gpt2(len(tok.get_vocab()), 1).transformer, tok, 64)
    _, free = run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(), log=lambda s: None)
    budget = free[3]["kl"] - 1e-6
    logs = []
    _, retried = run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(kl_budget=budget, kl_budget_retries=3),
                         log=logs.append)
    assert retried[:2] == free[:2]  # identical up to the update that the crossing undoes (step 2's)
    assert "step 3: rollout KL" in "".join(logs) and "back to the policy of step 2, retry 1 of 3" in "".join(logs)
    later = [h for h in retried if h["step"] > 3]
    assert later, [h["step"] for h in retried]  # the round went on past its first crossing
    assert all(h["kl_coef"] == 2 * 0.01 for h in later)  # beta x kl_budget_backoff (2) after one retry
    assert all(h["kl"] <= budget for h in retried)


def test_a_kl_round_step_caps_what_one_round_adds_to_its_parents_kl(setup):
    """With a step and no budget (or a budget far above), the round's budget is the parent's KL + the step: here the
    parent is the reference (KL 0), so a step just under the unconstrained run's step-3 KL ends the round as a
    budget of that size does, with the same policy."""
    tok, policy_dir = setup
    rm = VowelReward(tiny_gpt2(len(tok.get_vocab()), 1).transformer, tok, 64)
    _, free = run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(), log=lambda s: None)
    step = free[3]["kl"] - 1e-6
    runs = [run_ppo(policy_dir, policy_dir, rm, PROMPTS, config(kl_budget_retries=0, **kw), log=lambda s: None)
            for kw in ({"kl_budget": step}, {"kl_round_step": step}, {"kl_budget": 1e9, "kl_round_step": step})]
    (want_policy, want), *paced = runs
    assert want == free[:2]
    for policy, hist in paced:
        assert hist == want
        for (name, a), (_, b) in zip(policy.state_dict().items(), want_policy.state_dict().items()):
            assert torch.equal(a, b), name


def test_a_kl_round_step_counts_from_the_parents_kl_not_from_zero():
    """A parent at KL 3 (its round's first batch) with a step of 1 and a far budget: a batch at 3.5 trains, one at 4.5
    is over (a step counted from 0 would refuse 3.5; without the step both train), and the update that produced its
    sampler is undone."""
    from training.ppo_trainer import END, WITHIN, KLBudget

    def batch(kl: float) -> torch.Tensor:
        return torch.full((4, 2), kl / 2)  # (B, T) per-token KL: every response sums to `kl`

    for step, want in [(1.0, [WITHIN, WITHIN, END]), (None, [WITHIN, WITHIN, WITHIN])]:
        module, history = torch.nn.Linear(1, 1), []
        w0 = module.weight.item()
        budget = KLBudget(100.0, module, retries=0, step=step)
        got = []
        for i, kl in enumerate([3.0, 3.5, 4.5]):
            got.append(budget.verdict(batch(kl), i, history, log=lambda s: None))
            if got[-1] == WITHIN:  # train on it: one update, one history entry
                history.append({"step": i})
                with torch.no_grad():
                    module.weight.add_(1.0)
        assert got == want
        assert budget.budget == (4.0 if step else 100.0)  # min(100, KL_parent 3 + 1)
        trained = 1 if step else 3  # the 4.5 batch's sampler (the 3.5 batch's update) undone
        assert len(history) == trained and module.weight.item() == pytest.approx(w0 + trained)


def test_round_budget_matches_a_naive_reference():
    from training.ppo_trainer import round_budget
    for budget, start, step in [(None, 0.0, None), (8.55, 3.0, None), (None, 3.0, 2.0), (8.55, 3.0, 2.0),
                                (8.55, 7.5, 2.0), (8.55, 9.0, 2.0)]:
        caps = [c for c in (budget, None if step is None else start + step) if c is not None]
        assert round_budget(budget, start, step) == (min(caps) if caps else None)


def test_over_kl_budget_matches_a_naive_reference():
    from training.ppo_trainer import over_kl_budget
    kl = torch.tensor([[0.5, 0.25, 0.0], [1.0, 1.0, 1.0]])  # (B, T) per-token KL; responses sum to 0.75 and 3.0
    mean = (0.75 + 3.0) / 2
    for budget, start, want in [(None, 0.0, False), (1.0, 0.0, True), (mean, 0.0, False), (1.0, 2.0, False),
                                (1.0, 1.5, True)]:
        assert over_kl_budget(kl, budget, start) == (budget is not None and mean > max(budget, start))
        assert over_kl_budget(kl, budget, start) == want


def test_kl_budget_with_evidence_matches_a_naive_two_sample_test():
    """z > 0: over only when the batch clears the budget by z standard errors and the start by z standard
    errors of the difference (the start's own error included); z = 0 is the bare comparison of means."""
    import math

    from training.ppo_trainer import kl_mean_se, over_kl_budget
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        B = int(torch.randint(2, 40, (1,), generator=g))
        kl = torch.rand(B, 5, generator=g) * float(torch.rand((), generator=g) * 4)  # (B, T) per-token KL
        sums = [float(x) for x in kl.sum(-1)]  # sum_t KL_t per response, naively
        mean = sum(sums) / B
        se = math.sqrt(sum((x - mean) ** 2 for x in sums) / (B - 1) / B)
        assert kl_mean_se(kl) == pytest.approx((mean, se), rel=1e-5)
        budget, start, start_se = (float(torch.rand((), generator=g) * 12) for _ in range(3))
        z = 1.64
        want = mean - budget > z * se and mean - start > z * math.sqrt(se ** 2 + start_se ** 2)
        assert over_kl_budget(kl, budget, start, z, start_se) == want
        assert over_kl_budget(kl, budget, start, 0.0, start_se) == (mean > max(budget, start))
    noisy = torch.tensor([[8.0], [12.0], [6.0], [14.0]])  # mean 10, se ~1.83: above 9 by less than 1.64 se
    assert over_kl_budget(noisy, 8.5, 9.0) and not over_kl_budget(noisy, 8.5, 9.0, z=1.64)
    assert over_kl_budget(noisy, 5.0, 5.0, z=1.64)  # 10 clears 5 by far more than 1.64 se


def test_logged_batch_figures_match_a_naive_reference():
    """Every step's log (rollout_stats): mean RM score, mean summed KL and its standard error (the figure the
    KL budget's test uses), mean response length and EOS share, each against a plain-Python reference."""
    import math

    from training.ppo_trainer import rollout_stats
    from training.rollout import Rollout
    kl = torch.tensor([[0.5, 1.0, 0.0], [2.0, 0.0, 0.0], [0.25, 0.25, 0.5]])  # (B, T) per-token KL
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1]])  # (B, T) response tokens
    ro = Rollout(query=torch.zeros(3, 2, dtype=torch.long), query_mask=torch.ones(3, 2, dtype=torch.long),
                 response=torch.zeros(3, 3, dtype=torch.long), response_mask=mask, logprobs=torch.zeros(3, 3),
                 ref_logprobs=torch.zeros(3, 3), values=None, scores=torch.tensor([1.0, -2.0, 4.0]),
                 has_eos=torch.tensor([True, False, True]))
    sums = [1.5, 2.0, 1.0]  # sum_t KL_t per response
    mean = sum(sums) / 3
    se = math.sqrt(sum((x - mean) ** 2 for x in sums) / 2 / 3)
    assert rollout_stats(ro, kl) == pytest.approx(
        {"mean_reward": 1.0, "kl": mean, "kl_se": se, "mean_response_len": 2.0, "eos_fraction": 2 / 3})


def test_rollouts_and_updates_run_under_the_device_autocast(setup, monkeypatch):
    """run_ppo enters training.devices.autocast (bf16 on CUDA, a no-op on CPU) for the reference
    normalisation, every rollout and every update forward, never around a backward."""
    import contextlib

    import training.ppo_trainer as trainer

    tok, policy_dir = setup
    entered, inside = [], []

    @contextlib.contextmanager
    def recording(device):
        entered.append(device)
        inside.append(True)
        try:
            yield
        finally:
            inside.pop()

    real_backward = torch.Tensor.backward

    def backward(self, *a, **k):
        assert not inside, "backward inside autocast"
        return real_backward(self, *a, **k)

    monkeypatch.setattr(trainer, "autocast", recording)
    monkeypatch.setattr(torch.Tensor, "backward", backward)
    rm = VowelReward(tiny_gpt2(len(tok.get_vocab()), 1).transformer, tok, 64)
    cfg = config(steps=2, rollout_batch_size=8, mini_batch_size=4, ppo_epochs=1)
    run_ppo(policy_dir, policy_dir, rm, PROMPTS, cfg, log=lambda s: None)
    assert len(entered) == 1 + 2 + 2 * 2  # normalisation, 2 rollouts, 2 x 2 mini-batch forwards
    assert all(d == torch.device("cpu") for d in entered)


class LengthReward(RewardModel):
    """Toy reward: the number of real (unmasked) tokens in the (prompt + response) sequence."""

    def forward(self, input_ids, attention_mask):
        return attention_mask.float().sum(-1)


def test_an_ensemble_reward_model_gives_ppo_the_mean_of_its_members_and_member_zeros_trunk(setup):
    """Detail 25 (RLHF_POLICY_RM_ENSEMBLE): the first rollout batch (same seed, same policy, so the same
    responses) scores as the mean of what each member alone gives it; the value model copies member 0's trunk."""
    from training.reward_ensemble import RewardEnsemble
    from training.reward_head import value_model_from

    tok, policy_dir = setup
    vowels = VowelReward(tiny_gpt2(len(tok.get_vocab()), 1).transformer, tok, 64)
    length = LengthReward(tiny_gpt2(len(tok.get_vocab()), 2).transformer, tok, 64)
    cfg = config(steps=1)
    first = {name: run_ppo(policy_dir, policy_dir, rm, PROMPTS, cfg, log=lambda s: None)[1][0]
             for name, rm in (("vowels", vowels), ("length", length), ("both", RewardEnsemble([vowels, length])))}
    assert first["vowels"]["mean_reward"] != first["length"]["mean_reward"]
    assert first["both"]["mean_reward"] == pytest.approx((first["vowels"]["mean_reward"]
                                                          + first["length"]["mean_reward"]) / 2)
    value = value_model_from(RewardEnsemble([vowels, length]))
    for (name, a), b in zip(value.backbone.state_dict().items(), vowels.backbone.state_dict().values()):
        assert torch.equal(a, b), name
    assert not torch.equal(next(iter(value.backbone.parameters())), next(iter(length.backbone.parameters())))
