"""Fine-tune state (issue 23): saved atomically every --save-every steps as one file, resumed only with the
settings it was trained with, kept on Ctrl-C and on a crash, and a kill -9 loses fewer than --save-every
steps. A tiny random pipeline (tests/test_t2i.py's TINY), so every run takes seconds."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rhf_core.align.state as state_module
import rhf_core.training as training
from rhf_core.align import (STATE_FILE, FinetuneConfig, FinetuneSettingsError, finetune, load_adapter_info,
                            load_finetune_state, run_settings, saved_steps, state_folder)
from rhf_core.errors import RHFError
from rhf_core.t2i import load_generator
from rhf_core.t2i.build import build_pipeline
from tests.test_reward import brightness
from tests.test_t2i import TINY

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = "pytorch_lora_weights.safetensors"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("gen") / "tiny-gen"
    build_pipeline(TINY, seed=2).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def gen(tiny_dir):
    return load_generator(tiny_dir)


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\ntwo blue squares\n")
    return path


def config(tmp_path, prompts, **kw) -> FinetuneConfig:
    base = dict(name="state", out=str(tmp_path / "adapter"), prompts=str(prompts), per_prompt=2, beta=0.0, rank=4,
                steps=4, batch_size=2, lr=5e-2, save_every=2, uncond_prob=0.0)
    return FinetuneConfig(**{**base, **kw})


def run(cfg, gen, **kw) -> dict:
    return load_adapter_info(finetune(cfg, generator=gen, reward=brightness, **kw))


def test_state_is_one_file_holding_weights_optimizer_step_and_settings(gen, tmp_path, prompts):
    cfg = config(tmp_path, prompts, steps=3, save_every=2)
    info = run(cfg, gen, resume=False)
    folder = state_folder("state")
    assert sorted(p.name for p in folder.iterdir()) == [STATE_FILE]  # no trainer.pt (pickle), no second file
    lora, opt, meta = load_finetune_state(folder / STATE_FILE)
    assert meta["step"] == 3 == saved_steps("state") and meta["steps"] == 3
    assert [e["step"] for e in meta["log"]] == [2, 3] == [e["step"] for e in info["log"]]
    # The state's weights are the adapter's, and the optimizer holds Adam's moments of each of them.
    adapter = load_file(str(Path(cfg.out) / WEIGHTS))
    assert set(lora) == {k.removeprefix("unet.") for k in adapter}
    assert all(torch.equal(lora[k.removeprefix("unet.")], v) for k, v in adapter.items())
    assert len(opt["state"]) == len(lora) and all(float(s["step"]) == 3 for s in opt["state"].values())
    assert {"exp_avg", "exp_avg_sq"} <= set(opt["state"][0]) and opt["param_groups"][0]["lr"] >= 0
    # What changes the result is in the settings; the name, the output folder and the save interval are not.
    assert meta["settings"]["lr"] == 0.05 and meta["settings"]["steps"] == 3
    assert not {"name", "out", "save_every"} & set(meta["settings"])
    assert saved_steps("no-such-run") == 0


def test_other_settings_refuse_to_resume_naming_them_and_no_resume_starts_over(gen, tmp_path, prompts):
    """The issue's case: a run with new settings "resumed" a finished state, trained 0 steps and wrote the
    old weights under an adapter.json claiming the new settings."""
    old = run(config(tmp_path, prompts), gen, resume=False)
    weights = (tmp_path / "adapter" / WEIGHTS).read_bytes()
    for change, named in [({"lr": 1e-2}, "lr: 0.05 → 0.01"), ({"steps": 8}, "steps: 4 → 8"),
                          ({"rank": 2, "beta": 0.5}, "beta: 0.0 → 0.5; rank: 4 → 2")]:
        with pytest.raises(FinetuneSettingsError, match=re.escape(named)) as err:
            run(config(tmp_path, prompts, **change), gen)
        assert "--no-resume" in str(err.value) and "4 steps" in str(err.value)
        assert isinstance(err.value, RHFError)  # pages show it as a message
    # What a path points at counts, not the path: the same prompt file with other prompts in it.
    prompts.write_text("a green star\n")
    with pytest.raises(FinetuneSettingsError, match="prompt list") as err:
        run(config(tmp_path, prompts), gen)
    assert err.value.differences == ["prompt list"] and str(prompts) not in str(err.value)
    prompts.write_text("a red circle\ntwo blue squares\n")
    assert (tmp_path / "adapter" / WEIGHTS).read_bytes() == weights and saved_steps("state") == 4  # untouched

    new = run(config(tmp_path, prompts, lr=1e-2), gen, resume=False)  # --no-resume: trains from step 0
    assert new["resumed_from"] == 0 and [e["step"] for e in new["log"]] == [2, 4] and new["config"]["lr"] == 0.01
    assert (tmp_path / "adapter" / WEIGHTS).read_bytes() != weights
    assert [e["reward_weighted_loss"] for e in new["log"]] != [e["reward_weighted_loss"] for e in old["log"]]
    # The same settings again resume the finished state: nothing left to train, the same adapter.
    weights = (tmp_path / "adapter" / WEIGHTS).read_bytes()
    again = run(config(tmp_path, prompts, lr=1e-2, out=str(tmp_path / "again"), save_every=3), gen)
    assert again["resumed_from"] == 4 and again["log"] == new["log"]
    assert (tmp_path / "again" / WEIGHTS).read_bytes() == weights


def test_equal_settings_written_differently_resume():
    cfg_int, cfg_float = FinetuneConfig(beta=1, lr=1), FinetuneConfig(beta=1.0, lr=1.0)

    class Gen:
        name, root = "g", Path("/nonexistent")

    assert run_settings(cfg_int, Gen, brightness, ["a"]) == run_settings(cfg_float, Gen, brightness, ["a"])
    assert run_settings(cfg_int, Gen, brightness, ["a"]) != run_settings(cfg_int, Gen, brightness, ["b"])
    assert run_settings(FinetuneConfig(save_every=7, out="x", name="y"), Gen, brightness, ["a"]) == \
        run_settings(FinetuneConfig(), Gen, brightness, ["a"])


def test_a_reward_without_weights_does_not_digest_the_working_directory(tmp_path, monkeypatch):
    """A function reward has no weights folder: its digest must not read the working directory (a weights
    file written there, e.g. another run's checkpoint, made the same run refuse to resume itself)."""
    class Gen:
        name, root = "g", Path("/nonexistent")

    monkeypatch.chdir(tmp_path)
    before = run_settings(FinetuneConfig(), Gen, brightness, ["a"])
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "other-run.safetensors").write_bytes(b"x" * 10)
    assert run_settings(FinetuneConfig(), Gen, brightness, ["a"]) == before


def test_no_resume_clears_the_old_state_before_anything_else(gen, tmp_path, prompts):
    run(config(tmp_path, prompts), gen, resume=False)
    assert saved_steps("state") == 4

    def interrupt(stage, fraction):  # Ctrl-C while the new run generates its samples, before any step
        assert stage == "generating"
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):  # 3 samples a prompt: not in the sample cache, so generated
        finetune(config(tmp_path, prompts, per_prompt=3), generator=gen, reward=brightness, resume=False,
                 progress=interrupt)
    assert saved_steps("state") == 0 and not state_folder("state").exists()


def test_a_state_without_settings_is_refused_until_no_resume(gen, tmp_path, prompts):
    folder = state_folder("state")
    folder.mkdir(parents=True)
    (folder / "trainer.pt").write_bytes(b"an older version's pickle")
    (folder / "lora.safetensors").write_bytes(b"")
    with pytest.raises(FinetuneSettingsError, match="older version, without its settings"):
        run(config(tmp_path, prompts), gen)
    assert run(config(tmp_path, prompts), gen, resume=False)["complete"]
    assert sorted(p.name for p in folder.iterdir()) == [STATE_FILE]
    (folder / STATE_FILE).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")  # damaged by hand
    with pytest.raises(RHFError, match="cannot be read.*--no-resume"):
        run(config(tmp_path, prompts), gen)
    assert saved_steps("state") == 0


def test_a_crash_while_saving_leaves_the_previous_state_loadable(gen, tmp_path, prompts, monkeypatch):
    """The state file's second save dies after writing half of it (before the rename): the first save's
    state is still the one on disk, it loads, and a rerun resumes from it."""
    real_fsync, writes = os.fsync, []

    def crashing_fsync(fd):
        name = os.readlink(f"/proc/self/fd/{fd}")
        if STATE_FILE in name:
            writes.append(name)
            if len(writes) >= 2:
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
                raise OSError("simulated crash while saving the state")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", crashing_fsync)
    with pytest.raises(OSError, match="simulated crash"):
        run(config(tmp_path, prompts, steps=6), gen, resume=False)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert len(writes) >= 2 and saved_steps("state") == 2
    assert sorted(p.name for p in state_folder("state").iterdir()) == [STATE_FILE]  # no half-written leftovers
    lora, opt, meta = load_finetune_state(state_folder("state") / STATE_FILE)
    assert meta["step"] == 2 and [e["step"] for e in meta["log"]] == [2] and len(opt["state"]) == len(lora)
    info = run(config(tmp_path, prompts, steps=6), gen)
    assert info["resumed_from"] == 2 and info["complete"] and [e["step"] for e in info["log"]] == [2, 4, 6]


def test_the_adapter_folder_is_replaced_whole(gen, tmp_path, prompts, monkeypatch):
    """A crash while writing the new adapter leaves the old one as it was, weights and adapter.json alike."""
    run(config(tmp_path, prompts), gen, resume=False)
    folder = tmp_path / "adapter"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    real = training.atomic_write_text

    def crash(path, text):
        if Path(path).name == "adapter.json":
            raise OSError("simulated crash while writing adapter.json")
        real(path, text)

    monkeypatch.setattr(training, "atomic_write_text", crash)
    with pytest.raises(OSError, match="simulated crash"):
        run(config(tmp_path, prompts, lr=1e-2), gen, resume=False)
    monkeypatch.setattr(training, "atomic_write_text", real)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".adapter")] == []  # no temporary folders
    assert run(config(tmp_path, prompts, lr=1e-2), gen)["config"]["lr"] == 0.01  # resumes the saved state
    assert (folder / WEIGHTS).read_bytes() != before[WEIGHTS]
    # An --out folder that holds anything but an adapter is never replaced, and refused before training.
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(RHFError, match="not an adapter folder"):
        run(config(tmp_path, prompts, out=str(other), name="other"), gen, resume=False)
    assert (other / "notes.txt").read_text() == "keep me" and saved_steps("other") == 0


def test_stopping_keeps_every_finished_step_and_says_how_many(gen, tmp_path, prompts):
    """The page's two ways to stop: its Stop flag (should_stop), and Streamlit stopping the script (an
    exception that is not an Exception); saved_steps says what was kept."""
    calls = []
    info = run(config(tmp_path, prompts, steps=8, save_every=100), gen, resume=False,
               should_stop=lambda: len(calls.append(1) or calls) >= 3)
    assert info["steps_done"] == 3 and not info["complete"] and saved_steps("state") == 3

    class StopScript(BaseException):
        pass

    def stop_after_5(stage, fraction):
        if stage == "fine-tuning" and fraction >= 5 / 8:
            raise StopScript

    with pytest.raises(StopScript):
        run(config(tmp_path, prompts, steps=8, save_every=100), gen, progress=stop_after_5)
    assert saved_steps("state") == 5
    info = run(config(tmp_path, prompts, steps=8, save_every=100), gen)
    assert info["resumed_from"] == 5 and info["complete"] and [e["step"] for e in info["log"]] == [3, 5, 8]


def test_slow_steps_are_saved_by_time_too_with_their_unlogged_losses(gen, tmp_path, prompts, monkeypatch):
    """A step slower than SAVE_SECONDS (draft on a CPU: minutes) is saved at once, whatever --save-every says;
    the steps not yet logged travel with the state, so a resumed run's log entry still covers them."""
    real, saves = state_module.atomic_write_bytes, []

    def record(path, data):
        real(path, data)
        if Path(path).name == STATE_FILE:
            saves.append(tmp_path / f"state-{len(saves)}")
            saves[-1].write_bytes(data)

    monkeypatch.setattr(state_module, "atomic_write_bytes", record)
    monkeypatch.setattr(state_module, "SAVE_SECONDS", 0.0)  # every step counts as slow
    run(config(tmp_path, prompts, steps=4, save_every=100), gen, resume=False)
    assert [load_finetune_state(p)[2]["step"] for p in saves] == [1, 2, 3, 4]
    _, _, meta = load_finetune_state(saves[2])
    assert meta["log"] == [] and len(meta["parts"]) == 3
    monkeypatch.setattr(state_module, "SAVE_SECONDS", 1e9)
    shutil.copy(saves[2], state_folder("state") / STATE_FILE)  # as if killed after step 3's save
    info = run(config(tmp_path, prompts, steps=4, save_every=100), gen)
    assert info["resumed_from"] == 3 and [e["step"] for e in info["log"]] == [4]
    assert [load_finetune_state(p)[2]["step"] for p in saves] == [1, 2, 3, 4, 4]  # the resumed run saved at its end only


@pytest.mark.parametrize("change, message", [
    ({"name": "../escape"}, "fine-tune name '../escape'"), ({"save_every": 0}, "save_every must be a whole number"),
    ({"steps": 0}, "steps must be a whole number"), ({"steps": 2.5}, "steps must be a whole number"),
])
def test_bad_names_and_counts_are_refused(gen, tmp_path, prompts, change, message):
    with pytest.raises(RHFError, match=message):
        run(config(tmp_path, prompts, **change), gen, resume=False)
    assert not (tmp_path / "adapter").exists()


# --- the command line, as a user runs it: kill -9, another run's settings, Ctrl-C ---------------------------

def cli(tiny_dir, prompts, out, *extra) -> list[str]:
    # The embedded RAHF's plausibility: a reward that ranks this random pipeline's samples (the judge
    # reads no ShapesWorld scene in them and gives all the same value, which is refused).
    return [sys.executable, "-m", "rhf_core", "finetune", "--name", "cli", "--out", str(out), "--generator",
            str(tiny_dir), "--reward", "rahf-plausibility", "--prompts", str(prompts), "--per-prompt", "2", "--beta", "0",
            "--rank", "4", "--batch-size", "2", "--lr", "0.05", "--uncond-prob", "0", *extra]


@pytest.fixture
def cli_env(tmp_path):
    cache = tmp_path / "cache"
    env = {**os.environ, "RHF_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    return env


def start_and_wait(cmd, env, log: Path, at_least: int, timeout: float = 120) -> subprocess.Popen:
    """Start the CLI and return once its saved state holds at least `at_least` steps."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    state = Path(env["RHF_CACHE_DIR"]) / "finetune-state" / "cli"
    deadline = time.time() + timeout
    os.environ["RHF_CACHE_DIR"], restore = env["RHF_CACHE_DIR"], os.environ["RHF_CACHE_DIR"]
    try:
        while saved_steps("cli") < at_least:
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no state saved in time"
            time.sleep(0.02)
    finally:
        os.environ["RHF_CACHE_DIR"] = restore
    assert (state / STATE_FILE).is_file()
    return proc


def last_step(log: Path, steps: int) -> int:
    """The last finished step the CLI's progress bar showed."""
    found = re.findall(rf"fine-tuning:[^|]*\|[^|]*\|\s*(\d+)/{steps}\b", log.read_text())
    return int(found[-1])


def saved_in(env) -> int:
    old = os.environ["RHF_CACHE_DIR"]
    os.environ["RHF_CACHE_DIR"] = env["RHF_CACHE_DIR"]
    try:
        return saved_steps("cli")
    finally:
        os.environ["RHF_CACHE_DIR"] = old


def in_process(cmd: list[str], env: dict, monkeypatch, capsys) -> tuple[int, str]:
    """Run a `cli(...)` command through the CLI's own main() in this process, in `env`'s cache: (exit
    status, stderr). A process of its own costs ~10 CPU-seconds of imports; the run killed with -9 needs
    one, the runs after it do not."""
    from rhf_core.__main__ import main

    monkeypatch.setenv("RHF_CACHE_DIR", env["RHF_CACHE_DIR"])
    capsys.readouterr()
    code = main(cmd[3:])  # after [python, -m, rhf_core]
    return code, capsys.readouterr().err


def test_kill_9_resumes_within_save_every_steps_and_other_settings_refuse(tiny_dir, prompts, tmp_path, cli_env,
                                                                          monkeypatch, capsys):
    steps, every = 120, 7
    out = tmp_path / "adapter"
    log = tmp_path / "run1.log"
    proc = start_and_wait(cli(tiny_dir, prompts, out, "--steps", str(steps), "--save-every", str(every)), cli_env,
                          log, at_least=every)
    time.sleep(0.3)  # somewhere between two saves
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    killed_at, kept = last_step(log, steps), saved_in(cli_env)
    assert proc.returncode == -signal.SIGKILL and killed_at < steps, "finished before the kill: raise steps"
    # At most save_every steps lost (exactly that only when the kill lands while the next save is written).
    assert 0 <= killed_at - kept <= every, (killed_at, kept)
    assert not out.exists()

    # Other settings: refused at once with exit status 2, naming the setting; the state is kept.
    code, err = in_process(cli(tiny_dir, prompts, out, "--steps", str(steps), "--lr", "0.01"), cli_env, monkeypatch,
                           capsys)
    assert code == 2 and "\nerror: the saved state of fine-tune 'cli'" in err and "Traceback" not in err
    assert "lr: 0.05 → 0.01" in err and "--no-resume" in err and saved_in(cli_env) == kept

    # The same settings resume from the kept step and finish.
    code, err = in_process(cli(tiny_dir, prompts, out, "--steps", str(steps), "--save-every", str(every)), cli_env,
                           monkeypatch, capsys)
    assert code == 0, err[-3000:]
    info = load_adapter_info(out)
    assert info["resumed_from"] == kept and info["complete"] and info["steps_done"] == steps
    logged = [e["step"] for e in info["log"]]
    assert logged == sorted(set(logged)) and logged[-1] == steps and kept in logged


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_saves_the_last_finished_step_and_exits_without_a_traceback(signum, tiny_dir, prompts, tmp_path, cli_env):
    # Far more steps than can finish before the signal, even when a loaded machine starves this test
    # (at ~15 steps/s a 400-step run once ended before the signal arrived); save-every as large, so
    # no periodic save comes first and what is kept is the interrupt's save.
    steps = 20000
    log = tmp_path / "run.log"
    proc = subprocess.Popen(cli(tiny_dir, prompts, tmp_path / "adapter", "--steps", str(steps), "--save-every", str(steps)),
                            cwd=ROOT, env=cli_env, stdout=subprocess.DEVNULL, stderr=log.open("w"),
                            # as from a terminal: a pytest-xdist worker ignores SIGINT, and a child inherits
                            # that (Python then installs no Ctrl-C handler, so the signal did nothing)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while not re.search(rf"fine-tuning:[^|]*\|[^|]*\|\s*([1-9]\d*)/{steps}", log.read_text()):
        assert proc.poll() is None, log.read_text()[-3000:]
        assert time.time() < deadline
        time.sleep(0.02)
    time.sleep(0.2)
    proc.send_signal(signum)
    proc.wait(timeout=60)
    err = log.read_text()
    kept = saved_in(cli_env)
    assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
    assert 1 <= last_step(log, steps) <= kept < steps  # the finished steps (no periodic save came first)
    lines = re.findall(r"interrupted: [^\r\n]*", err)  # (after the progress bars' control characters)
    assert len(lines) == 1 and f"{kept} of {steps} steps kept" in lines[0] and "resume" in lines[0], err[-2000:]
    assert not (tmp_path / "adapter").exists()
