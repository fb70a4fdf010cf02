"""End-to-end fine-tuning runs on tiny real models: outputs, resume after a kill, determinism,
DDP metric sync, LoRA/QLoRA, NaN handling and scoring rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch

from mre.config import compose
from mre.results import read_jsonl
from mre.runner import run
from mre.strategies import EndSpawnedProcessGroup
from mre.tasks import generative
from tests.conftest import REPO

SMALL = [
    "dataset.synthetic.n=500",
    "dataset.n_train=240",
    "dataset.n_dev=32",
    "dataset.n_test=64",
    "eval.max_new_tokens=24",
    "model.tiny.hidden_size=64",
    "model.tiny.intermediate_size=128",
    "model.tiny.num_hidden_layers=2",
    "model.tokenizer.vocab_size=800",
    "callbacks.rich_progress_bar=null",
]


def small_cfg(tmp_path: Path, *overrides: str):
    return compose(
        [
            *SMALL,
            "logger=csv",
            f"paths.output_dir={tmp_path}",
            f"paths.cache_dir={tmp_path.parent}/c",
            *overrides,
        ]
    )


def train_cli(
    run_dir: Path, *overrides: str, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "train.py", *SMALL, f"hydra.run.dir={run_dir}", *overrides]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


@pytest.mark.slow
def test_default_cli_run_writes_the_run_directory(tmp_path):
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SILENT"}  # what a user sees, W&B's lines too
    out = train_cli(run_dir, "trainer.max_epochs=2", env=env)
    assert "test metrics" in out.stdout and "test/f1" in out.stdout
    said = out.stdout + out.stderr  # quiet: no dependency's tips or deprecation notices
    for noise in ("Tip:", "LeafSpec", "deprecated", "anonymous setting", "FutureWarning"):
        assert noise not in said, (noise, said[-3000:])
    for p in [
        ".hydra/config.yaml",
        "checkpoints/last.ckpt",
        "metrics.json",
        "predictions.jsonl",
        "csv/metrics.csv",
    ]:
        assert (run_dir / p).exists(), p
    assert len(list((run_dir / "checkpoints").glob("epoch*.ckpt"))) == 1  # the best one
    assert (run_dir / "model" / "config.json").exists() and (run_dir / "model" / "tokenizer.json").exists()
    assert list((run_dir / "wandb").glob("offline-run-*")), "W&B runs offline by default"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"test/f1", "test/precision", "test/recall", "test/exact_match"} <= set(metrics)
    assert all(0.0 <= v <= 1.0 for k, v in metrics.items() if k != "test/loss")
    rows = read_jsonl(run_dir / "predictions.jsonl")
    assert len(rows) == 64 and set(rows[0]) == {"id", "prompt", "gold", "prediction", "correct"}
    assert sum(r["correct"] for r in rows) / 64 == pytest.approx(metrics["test/exact_match"], abs=1e-6)


def test_same_seed_same_metrics_and_tli_without_anchor(tmp_path):
    m1 = run(small_cfg(tmp_path / "a", "direction=tli", "with_anchor=false", "trainer.max_epochs=2"))
    m2 = run(small_cfg(tmp_path / "b", "direction=tli", "with_anchor=false", "trainer.max_epochs=2"))
    assert {"test/acc", "test/f1", "test/micro_f1"} <= set(m1)
    assert m1 == m2
    assert m1["test/micro_f1"] == pytest.approx(m1["test/acc"])
    rows = read_jsonl(tmp_path / "a" / "predictions.jsonl")
    assert all(r["gold"] in {"Music", "Sports", "Technology", "Travel"} for r in rows)
    # the run records its collapse measure, computed from its own prediction rows
    from mre.analysis.runs import dev_below_majority, read_dev_checks
    from mre.setting import Direction
    from mre.stats import collapse
    from mre.stopping import LEARNING_MARGIN

    c = collapse(rows, Direction.tli)
    assert m1["test/majority_f1"] == pytest.approx(c.majority_f1) and 0 < c.majority_f1 < 1
    assert m1["test/top_share"] == pytest.approx(c.top_share)
    assert m1["test/collapsed"] == float(c.collapsed)
    checks = read_dev_checks(tmp_path / "a" / "csv" / "metrics.csv")
    assert len(checks) == 2 and checks[0].step < checks[1].step  # one validation per epoch, read back
    assert all(c.majority_f1 is not None for c in checks)  # val/majority_f1 logged with each
    best, majority = max(c.f1 for c in checks), checks[0].majority_f1
    assert dev_below_majority(checks) is (best <= majority + LEARNING_MARGIN)


@pytest.mark.slow
def test_ddp_two_processes_match_one(tmp_path):
    base = small_cfg(tmp_path / "one", "direction=tli", "trainer.max_epochs=1")
    run(base)
    ckpt = str(next((tmp_path / "one" / "checkpoints").glob("epoch*.ckpt")))
    one = run(small_cfg(tmp_path / "eval1", "direction=tli", "fit=false", f"ckpt_path={ckpt}"))
    two = train_cli(
        tmp_path / "eval2",
        "direction=tli",
        "fit=false",
        f"ckpt_path={ckpt}",
        "logger=csv",
        "trainer=ddp_spawn",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
    )
    assert two.returncode == 0
    m2 = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    for k in ("test/acc", "test/f1", "test/micro_f1"):
        assert m2[k] == pytest.approx(one[k], abs=1e-6), k
    p1 = read_jsonl(tmp_path / "eval1" / "predictions.jsonl")
    p2 = read_jsonl(tmp_path / "eval2" / "predictions.jsonl")
    assert p1 == p2 and len(p1) == 64


@pytest.mark.slow
def test_a_spawned_run_says_how_it_ended(tmp_path):
    """With ddp_spawn the workers train and the parent's trainer never does: the ending (early stopping,
    at the epoch and step where it stopped) is the one the workers reached."""
    run_dir = tmp_path / "spawned"
    stopper = [
        "early_stopping=val_f1",
        "callbacks.early_stopping.patience=1",
        "callbacks.early_stopping.min_delta=1.0",
    ]
    spawn = ["trainer=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=5"]
    train_cli(run_dir, "direction=tli", "logger=csv", "flow.enabled=false", *stopper, *spawn)
    ending = json.loads((run_dir / "ending.json").read_text())
    assert ending["reason"] == "early_stopping" and ending["epoch"] == 1 and ending["global_step"] > 0, ending
    assert (run_dir / "metrics.json").exists()


def _lora_warnings(quiet: bool) -> list[str]:
    """The warnings that building a LoRA model on a tiny LLaMA shows, with or without the run's filters."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    from mre.loggers import quiet_dependencies

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2)  # fmt: skip
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if quiet:
            quiet_dependencies()
        get_peft_model(LlamaForCausalLM(cfg), LoraConfig(r=2, target_modules=["q_proj"]))
    return [str(w.message) for w in caught]


def test_a_lora_model_is_built_without_a_dependency_s_deprecation_notice():
    """peft reads transformers' deprecated `is_gradient_checkpointing` at every LoRA build; the run drops
    that FutureWarning at its source (and the warning is really there without the filter)."""
    assert any("is_gradient_checkpointing" in m for m in _lora_warnings(quiet=False))
    assert not any("is_gradient_checkpointing" in m for m in _lora_warnings(quiet=True))


def test_a_run_ends_its_process_group(tmp_path):
    """Lightning leaves a gloo group to interpreter shutdown, where its threads can abort a finished
    DDP rank; a run (here DDP in this process, world size 1) ends the group itself."""
    metrics = run(
        small_cfg(
            tmp_path,
            "direction=tli",
            "trainer.max_epochs=1",
            "trainer=ddp",
            "trainer.precision=32-true",
            "trainer.accelerator=cpu",
            "trainer.devices=1",
        )
    )
    assert "test/f1" in metrics
    assert not torch.distributed.is_initialized()


class GroupAtTeardown(L.Callback):
    """Writes, in the worker, whether its process group is still there after the callbacks before it."""

    def __init__(self, path: Path):
        self.path = path

    def teardown(self, trainer, pl_module, stage):
        self.path.write_text(str(torch.distributed.is_initialized()))


def test_a_spawned_worker_ends_its_process_group(tmp_path):
    from lightning.pytorch.demos.boring_classes import BoringModel

    probe = tmp_path / "initialized"
    trainer = L.Trainer(
        strategy="ddp_spawn",
        accelerator="cpu",
        devices=1,
        max_steps=2,
        limit_val_batches=0,
        callbacks=[EndSpawnedProcessGroup(), GroupAtTeardown(probe)],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    assert probe.read_text() == "False"


def test_qlora_runs_and_saves_adapters_only(tmp_path):
    metrics = run(
        small_cfg(tmp_path, "model=tiny_llama_qlora", "trainer.max_epochs=1", "model.tiny.hidden_size=64")
    )
    assert "test/f1" in metrics
    files = {p.name for p in (tmp_path / "model").iterdir()}
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    state = torch.load(next((tmp_path / "checkpoints").glob("epoch*.ckpt")), weights_only=False)["state_dict"]
    assert state and all("lora_" in k for k in state)


class InjectNaN(L.Callback):
    """Corrupts one real weight at a given step, so the loss genuinely becomes NaN there."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            with torch.no_grad():
                next(pl_module.model.parameters()).fill_(float("nan"))


def test_nan_loss_stops_with_step_and_checkpoint(tmp_path):
    cfg = small_cfg(
        tmp_path,
        "trainer.max_epochs=1",
        "+callbacks.nan._target_=tests.test_train.InjectNaN",
        "+callbacks.nan.step=3",
    )
    with pytest.raises(FloatingPointError, match="global step 3") as e:
        run(cfg)
    assert (tmp_path / "checkpoints" / "nonfinite-step3.ckpt").exists()
    assert "nonfinite-step3.ckpt" in str(e.value)
    ending = json.loads((tmp_path / "ending.json").read_text())
    assert ending["reason"] == "nonfinite_loss" and ending["global_step"] == 3, ending


@pytest.mark.slow
def test_a_spawned_run_stopped_by_a_nan_loss_says_so(tmp_path):
    """Under ddp_spawn the NaN guard fires in a worker; its ending reaches ending.json all the same."""
    run_dir = tmp_path / "nan"
    cmd = [sys.executable, "train.py", *SMALL, f"hydra.run.dir={run_dir}", "trainer.max_epochs=1",
           "+callbacks.nan._target_=tests.test_train.InjectNaN", "+callbacks.nan.step=3",
           "trainer=ddp_spawn", "trainer.accelerator=cpu", "trainer.devices=2"]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert out.returncode != 0
    ending = json.loads((run_dir / "ending.json").read_text())
    assert ending["reason"] == "nonfinite_loss" and ending["global_step"] == 3, ending


def test_unseen_test_label_is_scored_wrong(tmp_path):
    parts = generative.build(small_cfg(tmp_path, "direction=tli"), tmp_path)
    module, ctx = parts.module, parts.module.context
    module.configure_model()
    batch = next(iter(parts.datamodule.test_dataloader()))
    batch["target"][0] = ctx.tokenizer.unk_token_id  # a gold code no label maps to
    logits, _ = module(batch)
    preds, golds = module._score_codes(logits, batch)
    assert golds[0] == len(ctx.labels) and preds[0] != golds[0]
    assert (golds[1:] < len(ctx.labels)).all()


def test_answer_window_loss_and_scores_match_full_logits(tmp_path):
    parts = generative.build(small_cfg(tmp_path, "direction=tli"), tmp_path)
    module = parts.module
    module.configure_model()
    batch = next(iter(parts.datamodule.test_dataloader()))
    full = module.model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"], labels=batch["labels"],
    )  # fmt: skip
    logits, loss = module(batch)
    assert loss.item() == pytest.approx(full.loss.item(), rel=1e-5)
    assert logits.shape[1] < batch["input_ids"].shape[1]
    assert torch.equal(module._score_codes(logits, batch)[0], module._score_codes(full.logits, batch)[0])


def _successor_model(model: torch.nn.Module, successor: dict[int, int]) -> None:
    """Make the next token a function of the current token alone: attention and MLP outputs zeroed,
    so the last hidden state is the current token's normalized embedding, which the LM head maps to
    the logit of its successor (|h|^2 = hidden size against random dot products of a few std)."""
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = model.get_input_embeddings().weight
        h = emb / emb.pow(2).mean(-1, keepdim=True).sqrt()
        head = torch.zeros_like(model.lm_head.weight)
        for cur, nxt in successor.items():
            head[nxt] += h[cur]
        model.lm_head.weight = torch.nn.Parameter(head)


def test_generation_stops_at_the_first_newline(tmp_path):
    parts = generative.build(small_cfg(tmp_path, "direction=wli"), tmp_path)
    module, tok = parts.module, parts.module.tokenizer
    module.configure_model()
    batch = next(iter(parts.datamodule.test_dataloader()))
    q = int(batch["prompt_ids"][0, -1])  # every plain prompt ends with the same "Answer:" token
    assert (batch["prompt_ids"][:, -1] == q).all()
    word, junk = (tok(w, add_special_tokens=False)["input_ids"][-1] for w in ("location", "person"))
    newline = tok.convert_tokens_to_ids("\n")
    _successor_model(module.model, {q: word, word: newline, newline: junk, junk: newline})
    want = tok.decode([word]).strip()
    assert module.generate(batch) == [want] * len(batch["prompt_ids"])  # not "location\nperson\nperson..."


def test_early_stopping_ends_a_run_and_says_why(tmp_path):
    """`early_stopping=val_f1` stops when dev F1 stops improving (here: no gain can reach min_delta=1,
    so after `patience` checks) and the run records it; a run without it trains its budget."""
    args = [*SMALL, "direction=tli", "logger=csv", "flow.enabled=false", "trainer.enable_progress_bar=false"]
    stopped = tmp_path / "stopped"
    run(compose([*args, "early_stopping=val_f1", "callbacks.early_stopping.patience=1",
                 "callbacks.early_stopping.min_delta=1.0", "trainer.max_epochs=5",
                 f"paths.output_dir={stopped}"]))  # fmt: skip
    ending = json.loads((stopped / "ending.json").read_text())
    assert ending["reason"] == "early_stopping" and ending["epoch"] == 1, ending
    assert "val/f1 did not improve for 1 validation checks (patience 1" in ending["detail"]
    assert (stopped / "metrics.json").exists()
    full = tmp_path / "full"
    run(compose([*args, "trainer.max_epochs=1", f"paths.output_dir={full}"]))
    ending = json.loads((full / "ending.json").read_text())
    assert ending["reason"] == "budget" and ending["epoch"] == 1 and "max_epochs=1" in ending["detail"]


def test_early_stopping_waits_for_min_epochs_and_a_run_that_spends_its_budget_says_budget(tmp_path):
    """A stopper that fires before `trainer.min_epochs` is taken back: the run trains on, and stops at
    the first check after the minimum; with the minimum at the budget it trains the budget, and its
    ending says so (not the early stop decided on the way)."""
    args = [*SMALL, "direction=tli", "logger=csv", "flow.enabled=false", "trainer.enable_progress_bar=false",
            "early_stopping=val_f1", "callbacks.early_stopping.patience=1",
            "callbacks.early_stopping.min_delta=1.0"]  # fmt: skip
    later = tmp_path / "later"  # fires at epoch 1 (as above), obeyed once 3 epochs are done
    run(compose([*args, "trainer.min_epochs=3", "trainer.max_epochs=6", f"paths.output_dir={later}"]))
    ending = json.loads((later / "ending.json").read_text())
    assert ending["reason"] == "early_stopping" and ending["epoch"] == 2, ending
    budget = tmp_path / "budget"
    run(compose([*args, "trainer.min_epochs=3", "trainer.max_epochs=3", f"paths.output_dir={budget}"]))
    ending = json.loads((budget / "ending.json").read_text())
    assert ending["reason"] == "budget" and ending["epoch"] == 3, ending
    assert "max_epochs=3" in ending["detail"]
