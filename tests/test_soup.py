"""`lmstack soup`: the weighted average of real checkpoints is exact, readable by every command, and
checkpoints that cannot be averaged are refused before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lmstack.checkpoint import atomic_save, load_checkpoint, model_checkpoint
from lmstack.cli import main
from lmstack.run import run


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory, cache_dir) -> list[Path]:
    """A real 2-step run of `tiny` with a checkpoint after each step."""
    from .helpers import SMALL, compose_cfg

    out = tmp_path_factory.mktemp("soup-run")
    cfg = compose_cfg([*SMALL, "callbacks.checkpoint.every_n_train_steps=1"], run_dir=out / "run", cache_dir=cache_dir)
    run(cfg)
    return [out / "run" / "checkpoints" / f"step00000{i}.ckpt" for i in (1, 2)]


@pytest.mark.slow
def test_the_soup_is_the_exact_weighted_average_and_a_normal_checkpoint(two_steps, tmp_path, capsys, cache_dir):
    main(["soup", f"ckpts=[{two_steps[0]},{two_steps[1]}]", f"out={tmp_path / 'soup'}", "weights=[1,3]"])
    soup, tok, ckpt = load_checkpoint(str(tmp_path / "soup" / "soup.ckpt"))
    (a, _, _), (b, tok_b, _) = (load_checkpoint(str(p)) for p in two_steps)
    changed = 0
    for (name, s), x, y in zip(soup.state_dict().items(), a.state_dict().values(), b.state_dict().values()):
        expected = (0.25 * x.double() + 0.75 * y.double()).to(x.dtype)
        assert torch.equal(s, expected), name
        changed += not torch.equal(x, y)
    assert changed > 10  # the two steps' weights differ, so the average is not one of them
    assert tok.to_str() == tok_b.to_str() and ckpt["soup"]["weights"] == [0.25, 0.75]
    assert ckpt["soup"]["checkpoints"] == [str(p.resolve()) for p in two_steps]

    capsys.readouterr()  # every command reads it: generate, and a run that starts from it
    main(["generate", f"ckpt={tmp_path / 'soup' / 'soup.ckpt'}", "prompt=def", "max_new_tokens=4", "temperature=0"])
    assert capsys.readouterr().out.startswith("def")
    from .helpers import SMALL, compose_cfg

    init = compose_cfg(
        [*SMALL, f"init_from={tmp_path / 'soup' / 'soup.ckpt'}"], run_dir=tmp_path / "from-soup", cache_dir=cache_dir
    )
    assert run(init)["steps"] == 2

    main(["soup", f"ckpts=[{two_steps[0]},{two_steps[1]}]", f"out={tmp_path / 'soup'}"])  # its own folder: replaced
    uniform, _, ckpt = load_checkpoint(str(tmp_path / "soup" / "soup.ckpt"))
    assert ckpt["soup"]["weights"] == [0.5, 0.5]
    w = next(iter(uniform.state_dict()))
    assert torch.equal(
        uniform.state_dict()[w], (0.5 * a.state_dict()[w].double() + 0.5 * b.state_dict()[w].double()).float()
    )


def test_checkpoints_that_cannot_be_averaged_are_refused_before_writing(two_steps, tmp_path):
    from lmstack.model import ModelConfig, Transformer

    _, _, ckpt = load_checkpoint(str(two_steps[0]))
    other_cfg = {**ckpt["hyper_parameters"]["model_cfg"], "n_layers": 1}
    deeper = tmp_path / "other.ckpt"
    atomic_save(model_checkpoint(Transformer(ModelConfig.from_dict(other_cfg))), deeper)
    out = tmp_path / "soup"
    with pytest.raises(SystemExit, match=r"not the same model .* model config differs in \['n_layers'\]"):
        main(["soup", f"ckpts=[{two_steps[0]},{deeper}]", f"out={out}"])
    with pytest.raises(SystemExit, match="weights has 3 values for 2 checkpoints"):
        main(["soup", f"ckpts=[{two_steps[0]},{two_steps[1]}]", f"out={out}", "weights=[1,1,1]"])
    with pytest.raises(SystemExit, match="must be finite, >= 0"):
        main(["soup", f"ckpts=[{two_steps[0]},{two_steps[1]}]", f"out={out}", "weights=[1,-1]"])
    with pytest.raises(SystemExit, match="at least 2 checkpoints"):
        main(["soup", f"ckpts=[{two_steps[0]}]", f"out={out}"])
    assert not out.exists()
    out.mkdir()
    (out / "soup.ckpt").write_text("someone's file")
    with pytest.raises(SystemExit, match="not written by lmstack"):
        main(["soup", f"ckpts=[{two_steps[0]},{two_steps[1]}]", f"out={out}"])
    assert (out / "soup.ckpt").read_text() == "someone's file"
