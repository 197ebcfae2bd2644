"""lm-evaluation-harness through lmstack's model (`lmstack.eval.harness`), offline, on lm-eval task YAMLs over
local files built from ../shared/data/evals: the same accuracy as `lmstack eval` on the same questions, and
the same scores and generations as lm-eval's own `hf` model on the checkpoint's Hugging Face export."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys

import pytest

from lmstack.eval.harness_tasks import continuous_metrics, run_harness, write_olmes_task
from lmstack.eval.multiple_choice import load_requests, score_task

from .helpers import ROOT, SHARED_DATA, write_harness_tasks

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
TASKS = ("arc_easy", "copa", "piqa", "sciq")
LIMIT = 40  # questions per task


@pytest.fixture(scope="module")
def setup(small_ckpt, tmp_path_factory):
    """The small checkpoint loaded as lmstack's lm-eval model and as lm-eval's `hf` model of its export, and
    the shared tasks written as lm-eval tasks."""
    from lm_eval.models.huggingface import HFLM

    from lmstack.eval.harness import LmstackLM
    from lmstack.interop.hf import export_hf

    out = tmp_path_factory.mktemp("harness")
    (out / "tasks").mkdir()
    write_harness_tasks(out / "tasks")  # olmes_copa and brown_continue
    for t in TASKS:
        if t != "copa":
            write_olmes_task(SHARED_DATA / "evals" / t, out / "tasks")
    ours = LmstackLM(ckpt=str(small_ckpt), batch_size=8)
    export_hf(str(small_ckpt), str(out / "hf"))
    theirs = HFLM(pretrained=str(out / "hf"), dtype="float32", device="cpu", batch_size=8)
    return ours, theirs, out


def samples(lm, tasks, include, limit=LIMIT):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include), include_defaults=False)
    return simple_evaluate(model=lm, tasks=tasks, task_manager=manager, limit=limit, bootstrap_iters=0)


@pytest.mark.slow
def test_harness_acc_equals_lmstack_eval_and_lm_evals_hf_model_on_the_export(setup):
    ours, theirs, out = setup
    names = [f"olmes_{t}" for t in TASKS]
    a, b = samples(ours, names, out / "tasks"), samples(theirs, names, out / "tasks")
    for t, name in zip(TASKS, names):
        questions = load_requests(SHARED_DATA / "evals" / t)[:LIMIT]
        direct = score_task(ours.model, ours.tok, questions)
        assert a["results"][name]["acc,none"] == direct["acc"], t  # exactly: the same questions and scores
        assert a["results"][name]["acc_norm,none"] == direct["len_norm"], t
        assert b["results"][name]["acc,none"] == direct["acc"], t
        continuous = continuous_metrics(a["samples"][name])  # what run_harness adds to lm-eval's metrics
        assert continuous["bpb"] == pytest.approx(direct["bpb"], rel=1e-5), t
        assert continuous["correct_prob"] == pytest.approx(direct["correct_prob"], rel=1e-5), t
        for x, y in zip(a["samples"][name], b["samples"][name]):
            assert x["doc_id"] == y["doc_id"]
            ours_ll = [r[0] for r in x["filtered_resps"]]
            hf_ll = [r[0] for r in y["filtered_resps"]]
            assert ours_ll == pytest.approx(hf_ll, abs=2e-3, rel=1e-4), (t, x["doc_id"])
            assert [r[1] for r in x["filtered_resps"]] == [r[1] for r in y["filtered_resps"]]  # is_greedy
    assert 0 < sum(a["results"][n]["acc,none"] for n in names) < len(names)


def test_partial_scoring_is_lm_evals_multiple_inputs(setup, tmp_path):
    """A context per choice and one shared continuation (Winogrande's form), built from real copa questions."""
    import gzip

    ours, _, _ = setup
    rows = []
    for q in load_requests(SHARED_DATA / "evals" / "copa")[:30]:
        for i, choice in enumerate(q.choices):
            request = {"context": q.context + choice, "continuation": " That is what happened."}
            rows.append({"doc_id": q.doc_id, "idx": i, "label": q.gold, "request": request})
    (tmp_path / "partial").mkdir()
    with gzip.open(tmp_path / "partial" / "requests.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    spec = write_olmes_task(tmp_path / "partial", tmp_path / "tasks")
    assert "doc_to_text: gold" in spec.read_text()
    questions = load_requests(tmp_path / "partial")
    direct = score_task(ours.model, ours.tok, questions)
    got = run_harness(ours, [str(spec)])["olmes_partial"]
    assert got["acc"] == direct["acc"] and got["samples"] == 30
    with pytest.raises(FileExistsError, match="does not overwrite"):
        write_olmes_task(tmp_path / "partial", tmp_path / "tasks")


def brown_texts(n: int) -> list[str]:
    """Real prose: the first n documents of the Brown Corpus sample in ../shared/data."""
    from lmstack.data.rows import iter_rows

    return [r["text"] for (_, r), _ in zip(iter_rows(str(SHARED_DATA / "prose" / "brown.jsonl.gz")), range(n))]


def instances(kind: str, args: list[tuple]):
    from lm_eval.api.instance import Instance

    return [Instance(request_type=kind, doc={}, arguments=a, idx=0) for a in args]


def test_rolling_loglikelihood_equals_the_hf_model_over_windows_longer_than_the_context(setup):
    ours, theirs, _ = setup
    texts = [t[:10000] for t in brown_texts(3)]
    assert all(len(ours.tok.encode(t).ids) > 2 * ours.model.cfg.max_seq_len for t in texts)  # several windows
    a = ours.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in texts]))
    b = theirs.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in texts]))
    assert a == pytest.approx(b, rel=1e-5)
    assert all(x < -100 for x in a)


def test_generate_until_writes_what_the_hf_model_writes(setup):
    """Greedy continuations of real sentence starts through our KV cache, batched and left-padded, stopped at
    the `until` strings: the text lm-eval's hf model generates from the export."""
    ours, theirs, _ = setup
    rng = random.Random(0)
    starts = [" ".join(t.split()[: rng.randint(3, 12)]) for t in brown_texts(10)]
    kwargs = [{"until": ["."], "max_gen_toks": 20}] * 6 + [{"until": ["\n\n", " the"], "max_gen_toks": 8}] * 4
    requests = list(zip(starts, kwargs))
    a = ours.generate_until(instances("generate_until", requests))
    b = theirs.generate_until(instances("generate_until", [(c, dict(k)) for c, k in requests]))
    assert a == b
    assert len(set(a)) > 3 and all(" the" not in x for x in a[6:]) and all("." not in x for x in a[:6])


def test_a_generate_until_task_scores_and_writes_the_same_through_both_models(setup):
    ours, theirs, out = setup
    a, b = samples(ours, ["brown_continue"], out / "tasks"), samples(theirs, ["brown_continue"], out / "tasks")
    assert a["results"]["brown_continue"]["chrf,none"] == b["results"]["brown_continue"]["chrf,none"] > 0
    responses = [x["filtered_resps"][0] for x in a["samples"]["brown_continue"]]
    assert responses == [y["filtered_resps"][0] for y in b["samples"]["brown_continue"]]
    assert len(responses) == 10 and len(set(responses)) > 3


@pytest.mark.slow
def test_lmstack_eval_and_lmstack_lm_eval_run_harness_tasks(setup, small_ckpt, tmp_path, capsys):
    from lmstack.cli import main

    _, _, out = setup
    spec = out / "tasks" / "olmes_copa.yaml"
    main(["eval", f"ckpt={small_ckpt}", f"tasks=[{SHARED_DATA / 'evals' / 'copa'}]", f"harness_tasks=[{spec}]",
          "limit=25", f"out={tmp_path / 'ev'}"])  # fmt: skip
    scored = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert scored["harness/olmes_copa"]["acc"] == scored["copa"]["acc"]
    assert scored["harness/olmes_copa"]["samples"] == scored["copa"]["questions"] == 25
    assert "| olmes_copa | acc |" in capsys.readouterr().out
    args = ["--model", "lmstack", "--model_args", f"ckpt={small_ckpt}", "--tasks", "olmes_copa", "--include_path",
            str(out / "tasks"), "--limit", "25", "--output_path", str(tmp_path / "lm")]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "lmstack.cli", "lm_eval", "run", *args], capture_output=True, text=True, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr[-2000:]
    written = json.loads(next((tmp_path / "lm").rglob("results_*.json")).read_text())
    assert written["results"]["olmes_copa"]["acc,none"] == scored["copa"]["acc"]
    with pytest.raises(SystemExit, match="lm-eval knows no task 'olmes_nope'"):
        main(["eval", f"ckpt={small_ckpt}", "harness_tasks=[olmes_nope]", f"harness_include=[{out / 'tasks'}]",
              f"out={tmp_path / 'ev2'}"])  # fmt: skip
    assert not (tmp_path / "ev2").exists()


def test_registering_lmstack_keeps_lm_evals_own_models():
    code = (
        "import lmstack.eval.harness\nfrom lm_eval.api.registry import get_model\n"
        "print(get_model('lmstack').__name__, get_model('hf').__name__)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["LmstackLM", "HFLM"]


def test_run_harness_can_leave_the_random_state_alone(setup):
    import numpy as np
    import torch

    ours, _, out = setup
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    run_harness(ours, [str(out / "tasks" / "olmes_copa.yaml")], limit=4, keep_rng=True)
    after = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    assert before[0] == after[0] and (before[1] == after[1]).all() and torch.equal(before[2], after[2])
    torch.manual_seed(0)  # not lm-eval's seed: an earlier test may have left the state lm-eval's seeding sets
    seeded = torch.get_rng_state().clone()
    run_harness(ours, [str(out / "tasks" / "olmes_copa.yaml")], limit=4)  # lm-eval's seeding, as it does
    assert not torch.equal(seeded, torch.get_rng_state())


@pytest.mark.slow
def test_ranks_of_a_sharded_model_answer_lm_evals_requests_in_step(tmp_path):
    """FSDP2 on 2 processes, each rank with its own requests: generation groups of different sizes and one
    group only rank 1 has (rank 0 decodes stand-ins for it), and different numbers of log-likelihood pairs;
    every rank gets what the whole model gives for its requests."""
    from .helpers import run_worker_on_ranks

    run_worker_on_ranks("harness_lockstep_worker.py", tmp_path)
    for r in range(2):
        got = json.loads((tmp_path / f"rank{r}.json").read_text())
        (gen, lls), (gen_whole, lls_whole) = got["sharded"], got["whole"]
        assert gen == gen_whole and len(gen) == (4, 5)[r] and len(set(gen)) > 1
        assert lls == pytest.approx(lls_whole, rel=1e-5, abs=1e-4)


def test_every_rank_plans_the_same_decoding_batches():
    from lmstack.eval.harness import decoding_plan

    a, b, c = {"until": ["."]}, {"until": ["\n"]}, {"max_gen_toks": 3}
    plan = decoding_plan([{"a": (a, 2), "b": (b, 1)}, {"a": (a, 1), "b": (b, 2), "c": (c, 1)}])
    assert plan == [("a", a, 2), ("b", b, 2), ("c", c, 1)]
