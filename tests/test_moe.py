"""The MoE feed-forward against a naive per-token reference, its auxiliary losses against hand computations,
and MoE models in real fits: logging, checkpoint resume, FSDP on 2 processes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from lmstack.model import ModelConfig, Transformer
from lmstack.model.config import MoEConfig
from lmstack.model.moe import GROUPED_MM, MoE

from .helpers import train_on_ranks

ROOT = Path(__file__).resolve().parents[1]


def make(impl="loop", shared=False, norm_topk=False, seed=0) -> MoE:
    torch.manual_seed(seed)
    m = MoE(d_model=16, hidden=24, n_experts=6, top_k=2, shared_expert=shared, norm_topk=norm_topk, impl=impl)
    m.reset_parameters(0.2, 0.2, 3.0)
    torch.nn.init.normal_(m.router.weight, std=0.5)
    return m


def naive(m: MoE, x: torch.Tensor) -> torch.Tensor:
    """Each token through its chosen experts, one at a time, weighted by its gate."""
    rows = []
    for xt in x.reshape(-1, x.shape[-1]):
        probs = F.softmax(m.router(xt).float(), -1)
        w, idx = probs.topk(m.top_k)
        if m.norm_topk:
            w = w / w.sum()
        y = sum(w[j] * ((F.silu(xt @ m.w_gate[e]) * (xt @ m.w_up[e])) @ m.w_down[e]) for j, e in enumerate(idx))
        if m.shared is not None:
            y = y + m.shared(xt)
        rows.append(y)
    return torch.stack(rows).reshape(x.shape)


def grads(m: MoE, out: torch.Tensor, probe: torch.Tensor) -> dict[str, torch.Tensor]:
    m.zero_grad()
    (out * probe).sum().backward()
    return {n: p.grad.clone() for n, p in m.named_parameters()}


@pytest.mark.parametrize("impl", ["loop", "grouped"])
@pytest.mark.parametrize("shared,norm_topk", [(False, False), (True, True)])
def test_moe_equals_the_per_token_reference_forward_and_backward(impl, shared, norm_topk):
    if impl == "grouped" and not GROUPED_MM:
        pytest.skip("no torch._grouped_mm in this build")
    m = make(impl, shared, norm_topk)
    x = torch.randn(3, 7, 16)
    probe = torch.randn(3, 7, 16)
    out = m(x)
    ref = naive(m, x)
    assert (out - ref).abs().max() < 1e-5
    g, g_ref = grads(m, m(x), probe), grads(m, naive(m, x), probe)
    for name in g:
        assert (g[name] - g_ref[name]).abs().max() < 1e-5, name
    assert g["router.weight"].abs().sum() > 0  # the gates carry gradient back to the router


@pytest.mark.skipif(not GROUPED_MM, reason="no torch._grouped_mm in this build")
def test_grouped_and_loop_paths_agree_even_with_idle_experts():
    loop, grouped = make("loop"), make("grouped")
    grouped.load_state_dict(loop.state_dict())
    with torch.no_grad():  # route every token to experts 0 and 1 only: 4 experts get no token
        loop.router.weight.zero_()
        loop.router.weight[0].fill_(1.0)
        loop.router.weight[1].fill_(0.5)
        grouped.router.weight.copy_(loop.router.weight)
    x = torch.rand(2, 5, 16) + 0.1
    probe = torch.randn(2, 5, 16)
    a, b = loop(x), grouped(x)
    assert loop.aux["tokens_per_expert"].tolist() == [10, 10, 0, 0, 0, 0]
    assert (a - b).abs().max() < 1e-5
    ga, gb = grads(loop, loop(x), probe), grads(grouped, grouped(x), probe)
    assert all((ga[n] - gb[n]).abs().max() < 1e-5 for n in ga)


def test_aux_losses_on_a_known_routing():
    m = MoE(d_model=4, hidden=4, n_experts=4, top_k=1)
    logits = torch.tensor([[2.0, 0, 0, 0], [0, 2.0, 0, 0], [2.0, 0, 0, 0]])
    counts = torch.tensor([2, 1, 0, 0])
    aux = m.aux_losses(logits, counts)
    e2 = math.exp(2)
    p_hi, p_lo = e2 / (e2 + 3), 1 / (e2 + 3)
    mean_p = [(2 * p_hi + p_lo) / 3, (p_hi + 2 * p_lo) / 3, p_lo, p_lo]
    f = [2 / 3, 1 / 3, 0, 0]
    assert float(aux["lb_loss"]) == pytest.approx(4 * sum(a * b for a, b in zip(f, mean_p)), rel=1e-6)
    assert float(aux["z_loss"]) == pytest.approx(math.log(e2 + 3) ** 2, rel=1e-6)
    even = m.aux_losses(torch.zeros(8, 4), torch.tensor([2, 2, 2, 2]))
    assert float(even["lb_loss"]) == pytest.approx(1.0)  # perfectly balanced
    assert float(even["entropy"]) == pytest.approx(math.log(4))


def test_the_load_balancing_loss_alone_moves_the_router():
    moe = MoEConfig(experts=4, top_k=2, hidden=32, layers=[1])
    cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, moe=moe)
    model = Transformer(cfg)
    assert type(model.blocks[0].mlp).__name__ == "SwiGLU" and isinstance(model.blocks[1].mlp, MoE)
    model(torch.randint(0, 64, (2, 16)))
    lb, z = model.moe_aux_loss()
    lb.backward()
    assert model.blocks[1].mlp.router.weight.grad.abs().sum() > 0
    assert (
        cfg.non_embedding_params() == model.num_params() and cfg.non_embedding_params(active=True) < model.num_params()
    )


@pytest.mark.slow
def test_a_moe_fit_logs_routing_and_resumes_exactly(small_cfg, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lmstack.run import run

    over = [
        "model=moe-tiny",
        "callbacks.moe.every_n_steps=2",
        "train.max_tokens=1024",
        "callbacks.checkpoint.every_n_train_steps=2",
    ]
    cfg = small_cfg(*over)
    full = run(cfg)
    run_dir = Path(cfg.run_dir)
    events = EventAccumulator(str(next(run_dir.rglob("events.out.tfevents*")).parent)).Reload()
    tags = events.Tags()
    assert "train/moe_lb_loss" in tags["scalars"] and "moe/load_ratio" in tags["scalars"]
    assert "moe/layer3/router_entropy" in tags["scalars"] and "moe/layer0/tokens_per_expert" in tags["histograms"]
    assert all(v.value >= 1.0 for v in events.Scalars("moe/load_ratio"))
    assert 0.9 < events.Scalars("train/moe_lb_loss")[-1].value < 8.0  # E * sum f P: 1 when even, at most E
    cfg2 = small_cfg(*over, f"ckpt_path={run_dir / 'checkpoints' / 'step000002.ckpt'}")
    cfg2.run_dir = str(tmp_path / "resumed")
    resumed = run(cfg2)
    assert resumed["val/bpb"] == pytest.approx(full["val/bpb"], abs=1e-5)


@pytest.mark.slow
def test_moe_trains_with_fsdp_on_two_processes(tmp_path, cache_dir):
    ranks = train_on_ranks(tmp_path / "moe", cache_dir, "strategy=fsdp", "model=moe-tiny", "train.max_tokens=2048",
                           "callbacks.checkpoint.every_n_train_steps=2")  # fmt: skip
    for r in ranks:
        assert r["world_size"] == 2 and len(r["steps"]) == 4 and all(math.isfinite(s["loss"]) for s in r["steps"])
    from lmstack.checkpoint import load_checkpoint

    model, _, state = load_checkpoint(str(tmp_path / "moe" / "run" / "checkpoints" / "step000004.ckpt"))
    assert state["global_step"] == 4 and model.cfg.moe.experts == 8  # the experts' shards gathered back
    assert all(p.isfinite().all() for p in model.parameters())


def test_the_olmoe_like_preset_has_olmoes_sizes_on_the_meta_device():
    from dataclasses import replace

    from omegaconf import OmegaConf

    from lmstack.config.schema import validate

    from .helpers import compose_cfg

    spec = validate(OmegaConf.to_container(compose_cfg(["model=moe-1b-7b"]), resolve=True))
    cfg = replace(spec.model, vocab_size=50304)
    with torch.device("meta"):
        model = Transformer(cfg)
    n = model.num_params(non_embedding=True)
    embeddings = 2 * 50304 * 2048
    assert n == cfg.non_embedding_params()
    assert abs((n + embeddings) / 6.9e9 - 1) < 0.03  # OLMoE-1B-7B: 6.9B in all
    assert abs((cfg.non_embedding_params(active=True) + embeddings) / 1.3e9 - 1) < 0.03  # 1.3B active


def test_a_shared_experts_output_projection_is_depth_scaled_like_every_output():
    """depth_scaled_init gives every residual-stream output std / sqrt(2 * n_layers): attention's o_proj, the
    dense down projection and an MoE's shared-expert down projection alike (the last was missed once)."""
    torch.manual_seed(0)
    moe = MoEConfig(experts=4, top_k=2, hidden=256, shared_expert=True, layers=[1])
    cfg = ModelConfig(vocab_size=64, d_model=256, n_layers=8, n_heads=4, depth_scaled_init=True, moe=moe)
    model = Transformer(cfg)
    out_std = 0.02 / math.sqrt(16)
    for w in (
        model.blocks[0].mlp.down.weight,
        model.blocks[1].attn.o_proj.weight,
        model.blocks[1].mlp.shared.down.weight,
    ):
        assert w.std().item() == pytest.approx(out_std, rel=0.05)
    assert model.blocks[1].mlp.shared.up.weight.std().item() == pytest.approx(0.02, rel=0.05)
