"""rag: true trains on the prompts the server will see: system prompt + retrieved context + question."""

from __future__ import annotations

from distilltune.train.config import FinetuneConfig
from distilltune.train.finetune import run_finetune
from distilltune.train.progress import SilentReporter

FAST = {
    "batch_size": 4,
    "warmup_steps": 0,
    "eval_every": 0,
    "save_every": 0,
    "eval_samples": 2,
    "eval_loss_items": 2,
    "eval_max_new_tokens": 4,
}


def test_rag_trains_on_retrieved_context(tiny_task, tiny_model_dir, tokenizer, tmp_path):
    from distilltune.task import load_task
    from distilltune.train.data import build_examples
    from distilltune.train.run import make_prompter

    cfg = FinetuneConfig(
        task=str(tiny_task),
        model=str(tiny_model_dir),
        output=str(tmp_path / "rag"),
        rag=True,
        train={**FAST, "max_steps": 2},
    )
    task = load_task(tiny_task)
    prompter = make_prompter(cfg, task, tokenizer)
    with_ctx, _ = build_examples(task.train[:2], tokenizer, task.system_prompt, 512, prompter)
    without, _ = build_examples(task.train[:2], tokenizer, task.system_prompt, 512, None)
    text = tokenizer.decode(with_ctx[0].input_ids)
    assert len(with_ctx[0].input_ids) > len(without[0].input_ids)
    assert "$12" in text.split("<|im_start|>user")[0], "the retrieved rentals.md chunk is in the system turn"
    # the answer tokens (labels) are the same with and without context
    labels = lambda ex: [t for t in ex.labels if t != -100]  # noqa: E731
    assert labels(with_ctx[0]) == labels(without[0])
    run = run_finetune(cfg, reporter=SilentReporter())
    assert (run / ".complete").exists() and "retrieval-augmented prompts: yes" in (
        run / "README.md"
    ).read_text()
