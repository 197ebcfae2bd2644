"""The typed arguments of each `lmstack` command: one dataclass per command, composed by Hydra from
`conf/<command>.yaml` (the defaults registered from these classes) and checked by `to_dataclass`, the same
code and messages as the training config. A field without a default is required."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Union

from .prepare import PrepareSection
from .validate import field_


@dataclass
class GenerateArgs:
    ckpt: str  # an lmstack checkpoint (file or sharded folder)
    prompt: str  # Hydra quoting keeps spaces: "prompt='def main('"
    max_new_tokens: int = field_(64, min=0)  # tokens to generate at most
    temperature: float = field_(0.8, min=0.0)  # 0: greedy
    top_k: int = field_(50, min=0)  # 0: no top-k cut
    # nucleus sampling: the smallest set of tokens with this probability (1: off)
    top_p: float = field_(1.0, min=0.0, max=1.0)
    seed: int = 0  # the sampling seed
    device: str = "cpu"  # cpu, cuda or cuda:N


@dataclass
class EvalArgs:
    ckpt: str  # an lmstack checkpoint (file or sharded folder)
    out: str  # the folder that gets eval.json
    tasks: list[str] = field_([])  # names from conf/evals, task folders, prepared folders or JSONL files
    # lm-evaluation-harness tasks (lmstack.eval.harness): lm-eval task names, YAML files or folders of them
    harness_tasks: list[str] = field_([])
    harness_include: list[str] = field_([])  # more folders of lm-eval task YAMLs (lm-eval's include_path)
    num_fewshot: int = field_(-1, min=-1)  # harness tasks: -1 as each task says
    batch_size: int = field_(16, min=1)  # sequences scored per forward pass
    limit: int = field_(-1, min=-1)  # questions per task: -1 as configured, 0 all
    device: str = "cpu"  # cpu, cuda or cuda:N
    suite: str = "olmes"  # the conf/evals option whose set and task names `tasks` may use
    seq_len: int = field_(0, min=0)  # 0: the model's max_seq_len


@dataclass
class ChatArgs:
    ckpt: str  # a checkpoint of stage=sft, dpo or rlvr (with the chat template's tokens)
    system: str = ""  # a system prompt for the conversation
    max_new_tokens: int = field_(128, min=1)  # tokens to generate at most
    temperature: float = field_(0.0, min=0.0)  # 0: greedy
    top_k: int = field_(50, min=0)  # 0: no top-k cut
    seed: int = 0  # the sampling seed
    device: str = "cpu"  # cpu, cuda or cuda:N


@dataclass
class ExportArgs:
    ckpt: str  # an lmstack checkpoint (file or sharded folder)
    out: str  # the folder to write (new, or one lmstack wrote)
    format: Literal["hf"] = "hf"  # hf: a Hugging Face folder (Llama, OLMo 2 or OLMoE layout)


@dataclass
class ImportHFArgs:
    dir: str  # a Hugging Face Llama or OLMo 2 folder
    out: Optional[str] = None  # null: DIR/lmstack.ckpt


@dataclass
class ReportArgs:
    dir: str  # a sweep folder (outputs/sweeps/NAME/TIME)
    metric: str = "val/bpb"  # the metric that ranks the jobs
    # true or compute: fit L(C) = E + A C^-alpha over the jobs; ladder: a model ladder's two steps (ladder.json)
    fit: Union[bool, Literal["compute", "ladder"]] = False
    predict_flops: Optional[float] = field_(None, min=0.0)  # with fit=true: the metric predicted at this compute
    target_params: Optional[float] = field_(None, min=1.0)  # fit=ladder: the run to predict (default 10x the largest)
    target_tokens: Optional[float] = field_(None, min=1.0)  # fit=ladder: its tokens (default 20 x target_params)
    accuracy: str = "acc"  # fit=ladder: the accuracy step 2 predicts (acc, len_norm)
    decide: bool = False  # decisions.json: recipes (overrides without seed) compared per metric, with confidence
    last: int = field_(3, min=1)  # decide=true: a job's score is the mean of its last this many evaluations
    confidence: float = field_(0.95, min=0.5, max=1.0)  # decide=true: a call is decided at this bootstrap share
    against: Optional[str] = None  # decide=true: a sweep of the same recipes at a larger scale (decision accuracy)
    target: Optional[str] = None  # with against: the larger sweep's metric to agree with (default: each metric)


@dataclass
class PlanArgs:
    flops: float = field_(0.0, min=0.0)  # give any two of compute (flops, gpu_hours or usd), params, tokens
    gpu_hours: float = field_(0.0, min=0.0)  # compute as GPU hours (at mfu)
    usd: float = field_(0.0, min=0.0)  # compute as dollars (at usd_per_gpu_hour)
    params: float = field_(0.0, min=0.0)  # non-embedding parameters
    tokens: float = field_(0.0, min=0.0)  # training tokens
    gpu: str = "h100"  # a GPU of lmstack.train.flops's data-sheet table (h100, a100, ...)
    mfu: float = field_(0.4, min=0.0, max=1.0)  # model FLOPs utilisation assumed
    usd_per_gpu_hour: float = field_(2.0, min=0.0)  # the price of one GPU hour
    gpus: int = field_(1, min=1)  # GPUs the run uses
    tokens_per_param: float = field_(20.0, min=0.0)  # tokens per parameter when only compute is given (Chinchilla: 20)
    seq_len: int = field_(2048, min=1)  # the training sequence length (the batch size formula uses it)


@dataclass
class PrepareArgs:
    inputs: list[str]  # files, folders or globs
    output_dir: str  # the folder to write (new, or one lmstack prepare wrote), or an object-storage URL
    prepare: PrepareSection  # the pipeline (conf/prepare/)


@dataclass
class SoupArgs:
    ckpts: list[str]  # checkpoints of one model (files or sharded folders)
    out: str  # the folder that gets soup.ckpt
    weights: Optional[list[float]] = None  # null: uniform; else one per checkpoint (normalised to sum 1)


@dataclass
class OverlapArgs:
    corpus: list[str]  # prepared folders (their documents.jsonl.gz) or document files (JSONL, parquet, WARC)
    tasks: list[str]  # eval sets: names from conf/evals, OLMES task folders or request files, JSONL files
    ngram: int = field_(13, min=1)  # the same options as prepare.decontaminate
    min_words: int = field_(8, min=1)  # shorter eval items are matched whole from this many words
    suite: str = "olmes"  # the conf/evals option whose task names `tasks` may use
    text_field: str = "text"  # the documents' text key in JSONL and Parquet rows
    out: Optional[str] = None  # also write the report as JSON to this new file


@dataclass
class QualityTrainArgs:
    positives: list[str]  # documents of the class to keep: files, folders or globs in any format prepare reads
    negatives: list[str]  # documents of the other class (e.g. random web pages)
    out: str  # the folder that gets model.bin, metrics.json and report.md (new, or one lmstack wrote)
    unit: Literal["document", "paragraph"] = "document"  # one example per document, or per paragraph
    min_chars: int = field_(100, min=1)  # unit=paragraph: shorter paragraphs are left out
    held_out: float = field_(0.1, min=0.01, max=0.5)  # the share of documents held out (by a hash of their id)
    min_docs: int = field_(20, min=2)  # a side with fewer documents is refused
    max_ratio: float = field_(3.0, min=1.0)  # a side this many times larger than the other needs balance=true
    balance: bool = False  # keep as many documents of the larger side as the smaller has
    text_field: str = "text"  # the documents' text key in JSONL and Parquet rows
    # fastText's supervised options, DCLM's training script's defaults with word bigrams:
    lr: float = field_(0.1, min=0.0)  # fastText's learning rate
    dim: int = field_(100, min=1)  # the word vectors' size
    epoch: int = field_(5, min=1)  # passes over the examples (more for a few thousand examples: 25)
    word_ngrams: int = field_(2, min=1)  # word n-grams as features: 2, bigrams (DCLM)
    min_count: int = field_(1, min=1)  # words seen fewer times are left out
    bucket: int = field_(2_000_000, min=1)  # hashed word-bigram slots: the model is about bucket x dim x 4 bytes
    threads: int = field_(1, min=1)  # fastText's threads: 1 trains the same model on every run
    seed: int = 0  # fastText's seed


# command -> its arguments; each composes conf/<command>.yaml
COMMAND_ARGS = {
    "generate": GenerateArgs,
    "eval": EvalArgs,
    "chat": ChatArgs,
    "export": ExportArgs,
    "import-hf": ImportHFArgs,
    "report": ReportArgs,
    "plan": PlanArgs,
    "prepare": PrepareArgs,
    "soup": SoupArgs,
    "overlap": OverlapArgs,
    "quality-train": QualityTrainArgs,
}
