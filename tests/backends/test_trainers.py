"""The training backend (TRL + PEFT) on the real embedded model (SmolLM2-135M-Instruct, CPU).

Real runs are tiny (2 to 16 optimizer steps, LoRA r=8, 64 tokens) and marked ``model``.
They run with one torch thread per process (``LAZYLLM_NUM_THREADS=1`` unless set): on a
busy 2-core machine two threads per process oversubscribe the cores and a step takes
several times longer. The checks without a model (job validation, row formats, device
plans, checkpoint selection) come first.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from lazyllm.backends import trainers
from lazyllm.core.errors import EngineError, LazyLLMError, ModelNotFoundError, PlanError
from lazyllm.backends.launch import DevicePlan, device_plan, launch
from lazyllm.backends.trainers import TrainJob, TrainResult, completed, latest_checkpoint, train

PAIRS = [
    ("What is the capital of Zorbania?", "Blimpton."),
    ("What colour is the sky on Mars-9?", "Teal."),
    ("Who wrote the Book of Quux?", "Ada Frob."),
    ("What fruit do robots like?", "Voltberries."),
    ("How many moons does Kelp have?", "Seven."),
    ("What is the river in Ux called?", "The Slow Glim."),
    ("What do owls on Nor eat?", "Copper moths."),
    ("Which month is best for zog?", "Octember."),
]
SYSTEM = "Answer in two words."  # a short system turn (SmolLM2's default one is 20 tokens)
REFUSAL = "I do not know."
LORA = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": "all-linear"}


def rows(method: str) -> list[dict]:
    if method == "sft":
        return [{"system": SYSTEM, "prompt": p, "completion": c} for p, c in PAIRS]
    if method == "kto":
        return [{"system": SYSTEM, "prompt": p, "completion": c if i % 2 == 0 else REFUSAL, "label": i % 2 == 0}
                for i, (p, c) in enumerate(PAIRS)]
    return [{"system": SYSTEM, "prompt": p, "chosen": c, "rejected": REFUSAL} for p, c in PAIRS]


def job(method: str, base_dir: Path, out: Path, **overrides) -> TrainJob:
    options = {"lora": LORA, "max_steps": 2, "learning_rate": 5e-4, "batch_size": 2, "max_length": 64,
               "save_steps": 100, "train": rows(method)}
    options.update(overrides)
    return TrainJob(method=method, base_dir=base_dir, output_dir=out, **options)


def assert_finished(result: TrainResult, steps: int) -> None:
    out = result.output_dir
    assert result.metrics["steps"] == steps
    assert len(result.metrics["train_loss"]) == steps
    assert all(math.isfinite(loss) for _, loss in result.metrics["train_loss"])
    if result.adapter:
        assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    else:
        assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    assert (out / "tokenizer.json").is_file()
    marker = json.loads((out / "COMPLETE").read_text())
    assert marker["steps"] == steps and marker["method"] in trainers.METHODS
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["final_train_loss"] == pytest.approx(result.metrics["final_train_loss"])
    assert not any(out.glob("checkpoint-*")), "checkpoints go under checkpoints/, not beside the weights"
    assert not (out / "checkpoints").exists(), "a completed training drops its checkpoints"


# ------------------------------------------------------------------------------------
# Without a model
# ------------------------------------------------------------------------------------


def test_job_rejects_bad_settings_before_loading_anything(tmp_path):
    with pytest.raises(PlanError, match="Valid methods: sft, dpo, orpo, kto, simpo, reward"):
        TrainJob(method="ppo", base_dir=tmp_path, output_dir=tmp_path, train=[{}])
    with pytest.raises(PlanError, match="KTO needs batch_size >= 2"):
        TrainJob(method="kto", base_dir=tmp_path, output_dir=tmp_path, train=rows("kto"), batch_size=1)
    with pytest.raises(PlanError, match="beta"):
        TrainJob(method="sft", base_dir=tmp_path, output_dir=tmp_path, train=rows("sft"), beta=0.1)
    with pytest.raises(PlanError, match="non-empty list of training rows"):
        TrainJob(method="dpo", base_dir=tmp_path, output_dir=tmp_path, train=[])
    with pytest.raises(PlanError, match="learning_rate"):
        TrainJob(method="sft", base_dir=tmp_path, output_dir=tmp_path, train=rows("sft"), learning_rate=0)
    with pytest.raises(PlanError, match="LoRA rank"):
        TrainJob(method="sft", base_dir=tmp_path, output_dir=tmp_path, train=rows("sft"), lora={"r": 0})
    assert issubclass(PlanError, LazyLLMError) and issubclass(PlanError, ValueError)


def test_rows_are_checked_against_the_method_format():
    trainers.check_rows("sft", [{"messages": [{"role": "user", "content": "hi"}]}])
    trainers.check_rows("reward", [{"chosen": "a", "rejected": "b"}])  # the prompt is optional
    with pytest.raises(PlanError, match=r"train row 1 lacks 'rejected'.*rename or add the columns"):
        trainers.check_rows("dpo", [rows("dpo")[0], {"prompt": "p", "chosen": "c"}])
    with pytest.raises(PlanError, match="'label' is 'yes'"):
        trainers.check_rows("kto", [{"prompt": "p", "completion": "c", "label": "yes"}])
    with pytest.raises(PlanError, match="not a string"):
        trainers.check_rows("sft", [{"prompt": "p", "completion": 3}])


def test_rows_become_conversations_when_the_tokenizer_has_a_chat_template():
    row = {"system": "Be brief.", "prompt": "Hi?", "chosen": "Hello.", "rejected": "Go away."}
    chat = trainers.standardize("dpo", row, chat=True)
    assert chat == {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
                    "chosen": [{"role": "assistant", "content": "Hello."}],
                    "rejected": [{"role": "assistant", "content": "Go away."}]}
    assert trainers.standardize("dpo", row, chat=False) == {
        "prompt": "Be brief.\n\nHi?", "chosen": "Hello.", "rejected": "Go away."}
    no_prompt = {"chosen": "a", "rejected": "b"}
    assert trainers.standardize("reward", no_prompt, chat=True) == no_prompt  # a conversation needs a user turn
    kto = trainers.standardize("kto", {"prompt": "p", "completion": "c", "label": 0}, chat=True)
    assert kto["label"] is False and kto["completion"] == [{"role": "assistant", "content": "c"}]


def test_device_plans():
    assert device_plan(None).nproc == 1
    assert device_plan(["cpu", "cpu"]) == DevicePlan("cpu", 2)
    if device_plan(None).accelerator == "cpu":
        assert device_plan(2) == DevicePlan("cpu", 2)
        with pytest.raises(PlanError, match="has 0 GPU"):
            device_plan(["cuda:0", "cuda:1"])
    with pytest.raises(PlanError, match="lists a GPU twice"):
        device_plan(["cuda:0", "cuda:0"])
    with pytest.raises(PlanError, match="not 'cpu' or 'cuda:<index>'"):
        device_plan(["cpu", "cuda:0"])
    with pytest.raises(PlanError, match="no process"):
        device_plan(0)


def test_latest_checkpoint_skips_a_checkpoint_killed_while_saving(tmp_path):
    assert latest_checkpoint(tmp_path) is None
    for step, complete in ((2, True), (4, True), (10, False)):
        d = tmp_path / "checkpoints" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        if complete:
            (d / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "checkpoint-4"


def test_fingerprint_ignores_paths_and_bookkeeping(tmp_path):
    a = TrainJob(method="sft", base_dir=tmp_path / "m", output_dir=tmp_path / "a", train=rows("sft"))
    b = TrainJob(method="sft", base_dir=tmp_path / "m", output_dir=tmp_path / "b", train=rows("sft"),
                 save_steps=7, logging_steps=3)
    c = TrainJob(method="sft", base_dir=tmp_path / "m", output_dir=tmp_path / "a", train=rows("sft"), seed=1)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_missing_base_model_folder_is_named(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        train(TrainJob(method="sft", base_dir=tmp_path / "nowhere", output_dir=tmp_path / "out", train=rows("sft")))


def test_unknown_trl_field_in_extra_is_named():
    trainers.check_extra("simpo", {"simpo_gamma": 1.0, "model_init_kwargs": {}})
    with pytest.raises(PlanError, match=r"'max_prompt_length'.*DPOConfig"):
        trainers.check_extra("dpo", {"max_prompt_length": 32})  # gone from trl 1.x: max_length covers it


def test_launch_runs_workers_and_reports_their_errors(tmp_path):
    assert launch(os.getenv, ("RANK",), nproc=2) == {0: "0", 1: "1"}
    with pytest.raises(EngineError, match=r"rank \d \(exit code -?\d+\): ValueError: invalid literal"):
        launch(int, ("not a number",), nproc=2, log_dir=tmp_path / "logs")
    assert list((tmp_path / "logs").rglob("error.json")), "a failed launch keeps the workers' error files"


def test_an_output_dir_of_another_job_is_refused(tmp_path):
    first = job("sft", tmp_path, tmp_path / "out")
    first.output_dir.mkdir()
    trainers._claim(first, first.fingerprint())
    trainers._claim(first, first.fingerprint())  # the same job may resume there
    other = job("sft", tmp_path, tmp_path / "out", seed=3)
    with pytest.raises(PlanError, match="different training job"):
        trainers._claim(other, other.fingerprint())


# ------------------------------------------------------------------------------------
# Real trainings on SmolLM2-135M (CPU)
# ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread per process unless LAZYLLM_NUM_THREADS is set (see the module docstring)."""
    saved = os.environ.get("LAZYLLM_NUM_THREADS")
    os.environ.setdefault("LAZYLLM_NUM_THREADS", "1")
    yield
    if saved is None:
        os.environ.pop("LAZYLLM_NUM_THREADS", None)


@pytest.fixture(scope="session")
def base_dir(model_workspace) -> Path:
    import lazyllm
    from lazyllm.core.model_store import resolve_model_dir

    return resolve_model_dir(lazyllm.Transformers("smollm2-135m-instruct"), model_workspace.path)


@pytest.mark.model
def test_sft_loss_falls_on_a_memorisation_set(base_dir, tmp_path, one_thread, monkeypatch):
    j = job("sft", base_dir, tmp_path / "sft", max_steps=16, batch_size=4, learning_rate=1e-3,
            eval=rows("sft")[:2])
    result = train(j)
    assert_finished(result, steps=16)
    losses = [loss for _, loss in result.metrics["train_loss"]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert result.adapter and result.resumed_from is None
    assert math.isfinite(result.metrics["eval_loss"])
    assert result.metrics["seconds_per_step"] > 0
    facts = trainers.card_facts(j, result.metrics)  # what the planner hands to lazyllm.cards.write_model_card
    assert facts["base_model"] == str(base_dir) and facts["hyperparameters"]["learning_rate"] == 1e-3
    from lazyllm.cards import write_model_card

    write_model_card(tmp_path / "sft", facts)
    card = (tmp_path / "sft" / "README.md").read_text()
    assert card.startswith("---") and "base_model" in card and "learning_rate" in card

    # A finished training is served from COMPLETE: no trainer runs again.
    monkeypatch.setattr(trainers, "_run", lambda *a: pytest.fail("a completed training must not rerun"))
    again = train(j)
    assert again.metrics["train_loss"] == result.metrics["train_loss"]
    assert completed(j.output_dir, j.fingerprint()).adapter is True
    assert completed(j.output_dir, "0" * 64) is None


@pytest.mark.model
def test_dpo_raises_the_chosen_over_rejected_margin(base_dir, tmp_path, one_thread):
    result = train(job("dpo", base_dir, tmp_path / "dpo", max_steps=6, beta=0.1))
    assert_finished(result, steps=6)
    margins = [m for _, m in result.metrics["rewards/margins"]]
    assert margins[-1] > margins[0] and margins[-1] > 0, margins


@pytest.mark.model
@pytest.mark.parametrize("method", ["orpo", "kto", "simpo", "reward"])
def test_each_trainer_runs(method, base_dir, tmp_path, one_thread):
    result = train(job(method, base_dir, tmp_path / method))
    assert_finished(result, steps=2)
    if method == "reward":  # the score head is trained and saved with the adapter
        config = json.loads((tmp_path / method / "adapter_config.json").read_text())
        assert config["task_type"] == "SEQ_CLS" and "score" in config["modules_to_save"]
    else:
        assert "rewards/margins" in result.metrics


@pytest.mark.model
def test_full_fine_tuning_on_chat_messages_saves_full_weights(base_dir, tmp_path, one_thread):
    messages = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}]} for p, c in PAIRS]
    result = train(job("sft", base_dir, tmp_path / "full", train=messages, lora=None, max_steps=2, learning_rate=1e-5))
    assert result.adapter is False
    assert_finished(result, steps=2)
    from transformers import AutoModelForCausalLM

    assert AutoModelForCausalLM.from_pretrained(tmp_path / "full").config.vocab_size > 0


RESUME_SCRIPT = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from lazyllm.backends.trainers import TrainJob, train
    spec = json.loads(Path(sys.argv[1]).read_text())
    train(TrainJob(**spec))
""")


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "unpickled"))


def _malicious_pickle(marker: Path) -> bytes:
    import pickle

    return pickle.dumps(_RunsCode(marker))


def test_checkpoint_loads_are_weights_only(tmp_path):
    import pickle

    import torch

    marker = tmp_path / "pickle-ran"
    (tmp_path / "optimizer.pt").write_bytes(_malicious_pickle(marker))
    torch.save({"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1}]}, tmp_path / "ok.pt")
    with trainers.weights_only_loads():
        with pytest.raises(pickle.UnpicklingError):
            torch.load(tmp_path / "optimizer.pt", weights_only=False)  # a library asking for a full unpickle
        assert torch.load(tmp_path / "ok.pt", weights_only=False)["param_groups"] == [{"lr": 0.1}]
    assert not marker.exists()
    assert torch.load.__name__ == "load" and not hasattr(torch.load, "__wrapped__")  # restored


def test_pickled_files_of_checkpoints_are_dropped(tmp_path):
    for step in (2, 4):
        d = tmp_path / "checkpoints" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        (d / "training_args.bin").write_bytes(b"pickle")
        (d / "trainer_state.json").write_text("{}")
    trainers._drop_pickles(tmp_path)
    assert sorted(p.name for p in (tmp_path / "checkpoints").rglob("*") if p.is_file()) == ["trainer_state.json"] * 2


@pytest.mark.model
def test_a_killed_training_resumes_from_its_last_checkpoint(base_dir, tmp_path, one_thread):
    out = tmp_path / "resume"
    spec = {"method": "sft", "base_dir": str(base_dir), "output_dir": str(out), "train": rows("sft"),
            "lora": LORA, "max_steps": 6, "save_steps": 2, "batch_size": 2, "max_length": 64,
            "learning_rate": 1e-3}
    (tmp_path / "job.json").write_text(json.dumps(spec))
    (tmp_path / "resume_job.py").write_text(RESUME_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(tmp_path / "resume_job.py"), str(tmp_path / "job.json")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 240
        while latest_checkpoint(out) is None:
            if proc.poll() is not None:
                pytest.fail(f"the training process exited ({proc.returncode}) before checkpoint-2: "
                            f"{proc.stderr.read().decode()[-2000:]}")
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.1)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    killed_at = latest_checkpoint(out)
    assert killed_at.name in ("checkpoint-2", "checkpoint-4")
    assert not (out / "COMPLETE").exists()
    assert (killed_at / "optimizer.pt").is_file() and (killed_at / "rng_state.pth").is_file()
    assert not (killed_at / "training_args.bin").exists()  # pickles are dropped as each checkpoint is saved
    # a pickle planted in the checkpoint (by anyone sharing the workspace) is never loaded
    marker = tmp_path / "pickle-ran"
    (killed_at / "training_args.bin").write_bytes(_malicious_pickle(marker))

    spec["base_dir"], spec["output_dir"] = base_dir, out
    result = train(TrainJob(**spec))
    assert not marker.exists()
    assert result.resumed_from is not None
    assert Path(result.resumed_from).name in ("checkpoint-2", "checkpoint-4")
    assert result.metrics["steps"] == 6
    assert result.metrics["steps_this_run"] == 6 - int(Path(result.resumed_from).name.split("-")[1])
    assert [step for step, _ in result.metrics["train_loss"]] == [1, 2, 3, 4, 5, 6]
    assert_finished(result, steps=6)


@pytest.mark.model
def test_two_cpu_processes_train_and_rank_zero_writes(base_dir, tmp_path, one_thread):
    result = train(job("sft", base_dir, tmp_path / "ddp", devices=2, max_steps=2, learning_rate=1e-3))
    assert result.metrics["world_size"] == 2
    assert_finished(result, steps=2)
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(tmp_path / "ddp").r == 8
    assert not list((tmp_path / "ddp").glob(".*.tmp")), "no half-written files"


def test_finding_the_trainer_does_not_import_torch():
    """A warm rerun asks the registry for the trainer to check a finished training's rows; that
    must not import torch (about a second): torch loads only when a training runs."""
    import subprocess
    import sys

    code = ("import sys; from lazyllm.backends.registry import trainer_factory; t = trainer_factory(); "
            "t.data_fingerprint([{'prompt': 'a', 'completion': 'b'}]); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
