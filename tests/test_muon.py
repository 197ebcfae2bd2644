"""optimizer=muon (lmstack.train.muon): the Newton-Schulz iteration is the one written out, a step equals
torch.optim.Muon's on the hidden matrices and torch's AdamW on the rest, and the split of the parameters is
the documented one."""

from __future__ import annotations

import torch

from lmstack.model.config import ModelConfig, MoEConfig
from lmstack.model.transformer import Transformer
from lmstack.train import muon as M


def direct_newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Keller Jordan's iteration written out in float64: X <- aX + (bA + cA^2)X, A = XX^T, from G/||G||_F."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double()
    x = x.T if g.shape[0] > g.shape[1] else x
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def test_newton_schulz_is_the_iteration_written_out_and_torchs():
    from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, EPS, _zeropower_via_newtonschulz

    g = torch.Generator().manual_seed(0)
    for shape in ((64, 64), (96, 32), (32, 96)):
        grad = torch.randn(shape, generator=g)
        ours = M.newton_schulz(grad, 5, torch.float32)
        assert torch.allclose(ours.double(), direct_newton_schulz(grad), atol=1e-4), shape
        # the iteration orthogonalises: all but the tiniest singular values pulled into about (0.5, 1.5)
        s = torch.linalg.svdvals(ours)
        assert (s > 0.5).float().mean() > 0.9 and s.max() < 1.5, shape
        theirs = _zeropower_via_newtonschulz(grad, (DEFAULT_A, DEFAULT_B, DEFAULT_C), 5, EPS)
        assert torch.equal(M.newton_schulz(grad, 5, torch.bfloat16), theirs), shape
    experts = torch.randn(3, 32, 48, generator=g)  # an MoE layer's experts: each matrix on its own
    batched = M.newton_schulz(experts, 5, torch.float32)
    for e in range(3):
        assert torch.allclose(batched[e], M.newton_schulz(experts[e], 5, torch.float32), atol=1e-5)


def model(**moe) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, moe=MoEConfig(**moe) if moe else MoEConfig())
    return Transformer(cfg)


def cfg(**muon):
    from lmstack.config.schema import MuonSection, OptimizerSection

    return OptimizerSection(name="muon", lr=0.02, weight_decay=0.1, muon=MuonSection(**muon))


def test_the_groups_are_the_documented_split():
    groups = {g["group"]: set(g["names"]) for g in M.muon(model(), cfg()).param_groups}
    assert groups["muon"] == {
        f"blocks.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate", "mlp.up", "mlp.down")
    }
    assert groups["decay"] == {"lm_head.weight"}  # the output head: AdamW, decayed
    assert groups["no_decay"] == {"embed.weight", "norm.weight"} | {
        f"blocks.{i}.{n}_norm.weight" for i in range(2) for n in ("attn", "mlp")
    }  # embeddings and norms: AdamW without decay
    moe = {g["group"]: set(g["names"]) for g in M.muon(model(experts=4, top_k=2), cfg()).param_groups}
    assert {f"blocks.0.mlp.{w}" for w in ("w_gate", "w_up", "w_down")} <= moe["muon"]  # experts: Muon
    assert "blocks.0.mlp.router.weight" in moe["decay"]  # the router: AdamW


def test_a_step_is_torchs_muon_on_the_hidden_matrices_and_torchs_adamw_on_the_rest():
    ours, ref = model(), model()
    opt = M.muon(ours, cfg(ns_dtype="bfloat16"))  # torch's Muon orthogonalises in bfloat16
    hidden = M.hidden_matrices(ref)
    groups = {g["group"]: g for g in opt.param_groups}
    by_name = dict(ref.named_parameters())
    torch_muon = torch.optim.Muon(
        [by_name[n] for n in groups["muon"]["names"]], lr=0.02, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"
    )
    torch_adamw = torch.optim.AdamW(
        [{"params": [by_name[n] for n in groups[k]["names"]], "weight_decay": groups[k]["weight_decay"]}
         for k in ("decay", "no_decay")], lr=0.02, betas=(0.9, 0.95), eps=1e-8,
    )  # fmt: skip
    assert len(hidden) == len(groups["muon"]["params"])
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    for _ in range(3):  # momentum and AdamW's moments carry over steps
        for m, o in ((ours, [opt]), (ref, [torch_muon, torch_adamw])):
            for each in o:
                each.zero_grad()
            m(x).float().logsumexp(-1).mean().backward()
            for each in o:
                each.step()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=0), name
    state = opt.state_dict()  # one state dict: Muon's momentum and AdamW's moments, loaded back as they were
    again = M.muon(model(), cfg(ns_dtype="bfloat16"))
    again.load_state_dict(state)
    assert again.state_dict()["state"].keys() == state["state"].keys()
