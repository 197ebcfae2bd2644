"""Preference losses against hand computations: DPO, length-normalised DPO, SimPO, label smoothing."""

from __future__ import annotations

import math

import pytest
import torch

from lmstack.adapt.preference import preference_loss, response_logps


def t(*v):
    return torch.tensor(v, dtype=torch.float64)


def test_dpo_by_hand_with_and_without_label_smoothing():
    pc, pr, rc, rr, n = t(-5.0), t(-7.0), t(-6.0), t(-6.0), t(3)
    loss, m = preference_loss(pc, pr, rc, rr, n, n, "sigmoid", beta=0.1)
    assert float(loss) == pytest.approx(math.log1p(math.exp(-0.2)))  # h = (1) - (-1) = 2
    assert float(m["rewards/chosen"]) == pytest.approx(0.1) and float(m["rewards/rejected"]) == pytest.approx(-0.1)
    assert float(m["rewards/margin"]) == pytest.approx(0.2) and float(m["rewards/accuracy"]) == 1.0
    smooth, _ = preference_loss(pc, pr, rc, rr, n, n, "sigmoid", beta=0.1, label_smoothing=0.1)
    assert float(smooth) == pytest.approx(0.9 * math.log1p(math.exp(-0.2)) + 0.1 * math.log1p(math.exp(0.2)))


def test_rpo_alpha_adds_the_chosen_answers_mean_token_nll():
    # two pairs: chosen log-probs -3 over 2 tokens and -9 over 4 tokens -> mean NLL 12 / 6 = 2 per token
    pc, pr, rc, rr = t(-3.0, -9.0), t(-4.0, -8.0), t(-3.5, -9.5), t(-4.0, -8.0)
    nc, nr = t(2, 4), t(1, 3)
    plain, m = preference_loss(pc, pr, rc, rr, nc, nr, "dpo_norm", beta=2.0)
    with_nll, m2 = preference_loss(pc, pr, rc, rr, nc, nr, "dpo_norm", beta=2.0, rpo_alpha=0.5)
    dpo = (math.log1p(math.exp(-2.0 * (0.5 / 2))) + math.log1p(math.exp(-2.0 * (0.5 / 4)))) / 2
    assert float(plain) == pytest.approx(dpo)
    assert float(with_nll) == pytest.approx(dpo + 0.5 * 2.0)
    assert float(m["chosen_nll"]) == pytest.approx(2.0) and float(m2["rewards/margin"]) == float(m["rewards/margin"])


def test_dpop_penalises_a_chosen_answer_below_its_reference_likelihood():
    # pair 1: chosen log-ratio +1 (no penalty); pair 2: chosen log-ratio -2 (penalty lambda x 2 inside)
    pc, pr, rc, rr, n = t(-5.0, -8.0), t(-7.0, -9.0), t(-6.0, -6.0), t(-6.0, -6.0), t(1, 1)
    loss, _ = preference_loss(pc, pr, rc, rr, n, n, "sigmoid", beta=0.1, dpop_lambda=5.0)
    h = [(1.0 - (-1.0)), (-2.0 - (-3.0)) - 5.0 * 2.0]
    assert float(loss) == pytest.approx(sum(math.log1p(math.exp(-0.1 * x)) for x in h) / 2)
    plain, _ = preference_loss(pc, pr, rc, rr, n, n, "sigmoid", beta=0.1)
    assert float(loss) > float(plain)
    with pytest.raises(ValueError, match="simpo has none"):
        preference_loss(pc, pr, rc, rr, n, n, "simpo", dpop_lambda=1.0)


def test_dpo_norm_equals_sigmoid_at_equal_lengths_and_differs_otherwise():
    torch.manual_seed(0)
    pc, pr, rc, rr = (torch.randn(8, dtype=torch.float64) * 5 for _ in range(4))
    one = torch.ones(8, dtype=torch.long)
    a, _ = preference_loss(pc, pr, rc, rr, one, one, "sigmoid", beta=0.3)
    b, _ = preference_loss(pc, pr, rc, rr, one, one, "dpo_norm", beta=0.3)
    assert float(a) == pytest.approx(float(b), rel=1e-12)
    four = one * 4  # equal lengths n: dpo_norm is sigmoid with beta / n
    a, _ = preference_loss(pc, pr, rc, rr, four, four, "sigmoid", beta=0.3 / 4)
    b, _ = preference_loss(pc, pr, rc, rr, four, four, "dpo_norm", beta=0.3)
    assert float(a) == pytest.approx(float(b), rel=1e-12)
    lengths_c, lengths_r = one * 2, one * 9
    a, _ = preference_loss(pc, pr, rc, rr, lengths_c, lengths_r, "sigmoid", beta=0.3)
    b, _ = preference_loss(pc, pr, rc, rr, lengths_c, lengths_r, "dpo_norm", beta=0.3)
    assert abs(float(a) - float(b)) > 1e-3


def test_simpo_uses_no_reference():
    pc, pr, nc, nr = t(-4.0), t(-9.0), t(2), t(3)
    a, _ = preference_loss(pc, pr, t(0.0), t(0.0), nc, nr, "simpo", beta=2.0, gamma=0.5)
    b, _ = preference_loss(pc, pr, t(100.0), t(-50.0), nc, nr, "simpo", beta=2.0, gamma=0.5)
    h = -4 / 2 - (-9 / 3) - 0.5 / 2.0
    assert float(a) == float(b) == pytest.approx(math.log1p(math.exp(-2.0 * h)))
    with pytest.raises(ValueError, match="allowed: sigmoid, dpo_norm, simpo"):
        preference_loss(pc, pr, pc, pr, nc, nr, "ipo")


def test_response_logps_sum_the_labelled_positions():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, 3, 4, -100, -100], [-100, -100, -100, 1, 6]])
    total, n = response_logps(logits, labels)
    logp = torch.log_softmax(logits, -1)
    assert n.tolist() == [2, 2]
    assert float(total[0]) == pytest.approx(float(logp[0, 1, 3] + logp[0, 2, 4]), rel=1e-6)
    assert float(total[1]) == pytest.approx(float(logp[1, 3, 1] + logp[1, 4, 6]), rel=1e-6)


def test_a_cached_reference_equals_the_live_one():
    from lmstack.adapt.dpo import DPOObjective, frozen_copy
    from lmstack.adapt.pairs import Pair, collate_pairs, encode_pair
    from lmstack.data.tokenizer import train_bpe
    from lmstack.model import ModelConfig, Transformer
    from lmstack.tasks.chat_template import add_chat_tokens
    from lmstack.tasks.verifiable import make_task

    tok = add_chat_tokens(train_bpe(["What is 12 + 30? 42 -7 13"] * 40, 300))
    cfg = ModelConfig(vocab_size=320, d_model=32, n_layers=2, n_heads=2, max_seq_len=64)
    task = make_task("arithmetic")
    pairs = [Pair(e, e.answer, str(int(e.answer) + 1), "corrupted") for e in task.generate(6, seed=0)]
    items = [encode_pair(tok, p, None, 64) for p in pairs]
    policy = Transformer(cfg)
    live = DPOObjective(reference="live", loss="sigmoid", beta=0.5, reference_model=frozen_copy(policy))
    cached = DPOObjective(reference="cached", loss="sigmoid", beta=0.5)
    with torch.no_grad():
        batch = collate_pairs(items)
        rc, rr, _, _ = live.logps(policy, batch)
    for it, c, r in zip(items, rc.tolist(), rr.tolist()):
        it["ref_chosen"], it["ref_rejected"] = c, r
    batch = collate_pairs(items)
    with torch.no_grad():  # perturb the policy so the log-ratios are not all zero
        torch.manual_seed(1)
        for p in policy.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    a = live.reference_logps(batch, torch.device("cpu"))
    b = cached.reference_logps(batch, torch.device("cpu"))
    assert torch.allclose(a[0], b[0], atol=1e-5) and torch.allclose(a[1], b[1], atol=1e-5)
    pc, pr, nc, nr = live.logps(policy, batch)
    la, _ = preference_loss(pc, pr, *a, nc, nr, "sigmoid", 0.5)
    lb, _ = preference_loss(pc, pr, *b, nc, nr, "sigmoid", 0.5)
    assert float(la) == pytest.approx(float(lb), abs=1e-5) and float(la) != pytest.approx(math.log(2), abs=1e-4)
