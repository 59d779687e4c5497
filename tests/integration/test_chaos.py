"""Faults on the real local SLURM cluster (slurm/slurm-up.sh: nodes n1, n2, one CPU each), on CPU.

(1) Chaos preemption: a job is sent SLURM's warning signal (`scancel --signal=USR1`) five times, at moments drawn
    from a seed (batch ends at random offsets, a validation batch, ModelCheckpoint's periodic save, the first
    batches after a resume; tests.integration.callbacks.ChaosPreemption fires them from inside the job); each
    time it saves, requeues itself and resumes. It must end bit-identical (weights, optimizer state, LR
    schedule, EMA, global step) to an uninterrupted job with the same seed. For the GAN (which validates) and
    the tiny diffusion model (which has no validation loop: its five moments are batch ends, a save and a
    resume). One task each, so the two jobs run at once, on n1 and n2. The seed is printed; PANTHEON_CHAOS_SEED=<n>
    replays a failure.
(2) A lost node: a 2-node DDP GAN whose rank 1 (on n2) is killed with SIGKILL at a known step, no warning. The
    survivor's collective fails at once (the dead peer's connection closes; a peer that hangs instead is bounded
    by trainer=ddp_cpu's process-group timeout, 5 min), slurm/task.sh on n2 sees exit 137 and requeues the job,
    the requeued job resumes from the newest periodic checkpoint (losing less than the checkpoint interval) and
    ends bit-identical to an uninterrupted run.

Skipped with the reason when the cluster is down; every wait is bounded; jobs are cancelled by name at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.slurm_helpers import (
    CHAOS_SEED_VARIABLE,
    GAN_ARGS,
    JOB_TIMEOUT_S,
    ROOT,
    assert_same_training_state,
    chaos_plan,
    chaos_seed,
    dump_weights,
    job_env,
    job_state,
    load_weights,
    run_dir,
    sbatch,
    wait_for,
    wait_until_finished,
)

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("slurm_cluster")]

# slurm/single_node.sbatch with one CPU task (its GPU defaults overridden, as test_cluster_jobs does)
ONE_TASK = ("--ntasks-per-node=1", "--gpus-per-node=0", "--cpus-per-task=1")
CHAOS_TIMEOUT_S = 480  # the chaos job: six starts, five requeues (~12 s each), sharing two cores

# Each experiment: its overrides (3 epochs of 4 batches, ModelCheckpoint every 2 batches, EMA), optimizer steps
# per batch, and where it validates / saves (in batches trained).
CHAOS_RUNS = {
    "gan": {
        "args": [
            "experiment=mnist_gan", "trainer=cpu", "debug=bare", "seed=11", "trainer.max_epochs=3",
            "trainer.limit_val_batches=1", "+trainer.num_sanity_val_steps=0",
            "callbacks=model_checkpoint", "callbacks.model_checkpoint.monitor=null",
            "++callbacks.model_checkpoint.every_n_train_steps=4",  # optimizer steps: D and G, 2 a batch
            "+callbacks.ema._target_=pantheon.callbacks.ema.EMA", "+callbacks.ema.decay=0.9",
        ],
        "steps_per_batch": 2,
        "validations": [4, 8],  # epoch ends; the one after batch 12 ends the run
    },
    "diffusion": {
        "args": [
            "experiment=flowers_sd_tiny", "trainer=cpu", "debug=bare", "seed=11", "trainer.max_epochs=3",
            "trainer.max_steps=12", "callbacks=model_checkpoint",  # the experiment's EMA stays
            "data.resolution=32", "data.batch_size=2", "data.max_samples=64",  # 64 flowers (or generated shapes)
            "callbacks.model_checkpoint.every_n_train_steps=2",
        ],
        "steps_per_batch": 1,
        "validations": [],
    },
}  # fmt: skip
BATCHES, SAVES = 12, [2, 4, 6, 8, 10]
ENV = job_env(OMP_NUM_THREADS="1")  # one CPU per task: more threads only fight over the two cores


@pytest.fixture(scope="module")
def chaos_jobs(tmp_path_factory, job_name, pytestconfig) -> dict:
    """Submits, all at once, each experiment's chaos job and its uninterrupted reference (one task each: two
    run at a time, and the references fill the nodes while a chaos job waits to be requeued)."""
    seed = chaos_seed()
    message = f"chaos seed {seed} (replay: {CHAOS_SEED_VARIABLE}={seed})"
    with pytestconfig.pluginmanager.get_plugin("capturemanager").global_and_fixture_disabled():
        print(f"\n{message}", flush=True)  # shown on every run, passed or failed, -q or not
    jobs = {}
    for name, run in CHAOS_RUNS.items():
        plan = chaos_plan(seed, BATCHES, run["validations"], SAVES)
        tmp = tmp_path_factory.mktemp(f"chaos-{name}")
        (tmp / "plan.json").write_text(json.dumps({"seed": seed, "events": plan}))
        chaos = [
            "+callbacks.chaos._target_=tests.integration.callbacks.ChaosPreemption",
            f"+callbacks.chaos.plan={tmp}/plan.json",
        ]
        jobs[name] = {"seed": seed, "plan": plan, "tmp": tmp, **run}
        jobs[name]["job"], jobs[name]["log"] = submit(tmp / "chaos", job_name, [*run["args"], *chaos])
    for name, run in CHAOS_RUNS.items():
        tmp = jobs[name]["tmp"]
        jobs[name]["reference"], _ = submit(tmp / "reference", job_name, run["args"])
    return jobs


def submit(tmp: Path, job_name: str, args: list[str]) -> tuple[str, Path]:
    """sbatch slurm/single_node.sbatch (one CPU task) without waiting; its run writes under tmp."""
    tmp.mkdir(parents=True)
    args = [*args, f"paths.log_dir={tmp}/logs", *dump_weights(tmp / "weights")]
    return sbatch(tmp, job_name, args, wait=False, script="single_node", options=ONE_TASK, env=ENV)


@pytest.mark.parametrize("experiment", list(CHAOS_RUNS))
def test_chaos_preempted_job_ends_bit_identical(chaos_jobs: dict, experiment: str) -> None:
    chaos = chaos_jobs[experiment]
    job, log, plan, seed = chaos["job"], chaos["log"], chaos["plan"], chaos["seed"]
    replay = f"chaos seed {seed} (replay: {CHAOS_SEED_VARIABLE}={seed}), plan {plan}"
    state, restarts = wait_until_finished(job, CHAOS_TIMEOUT_S)
    text = log.read_text()
    assert state == "COMPLETED", f"{replay}\njob {job} ended {state}; output:\n{text[-5000:]}"
    fired = json.loads((run_dir(chaos["tmp"] / "chaos", job) / "chaos.json").read_text())
    assert [(e["kind"], e["batch"], e["restart"]) for e in fired] == [
        (e["kind"], e["batch"], n) for n, e in enumerate(plan)
    ], f"{replay}: each event fires once, in its own run of the job"
    assert restarts == len(plan), f"{replay}: {restarts} requeues"

    ckpt = run_dir(chaos["tmp"] / "chaos", job) / "checkpoints" / "last.ckpt"
    for event in plan:
        step = event["resumes_at"] * chaos["steps_per_batch"]
        assert f"saved {ckpt} at global step {step}\n" in text, f"{replay}: no save at step {step}"
        assert f"resumed {ckpt} at global step {step} " in text, f"{replay}: no resume at step {step}"

    reference_state, _ = wait_until_finished(chaos["reference"])
    assert reference_state == "COMPLETED", f"the reference job {chaos['reference']} ended {reference_state}"
    (preempted,) = load_weights(chaos["tmp"] / "chaos" / "weights", ranks=1)
    (reference,) = load_weights(chaos["tmp"] / "reference" / "weights", ranks=1)
    assert preempted["restart_count"] == len(plan), "the final state comes from the last run"
    assert preempted["global_step"] == BATCHES * chaos["steps_per_batch"]
    assert preempted["ema"] is not None and preempted["optimizers"], "EMA and optimizer state are compared"
    assert_same_training_state(
        preempted, reference, f"{experiment}, preempted 5 times vs uninterrupted ({replay})"
    )


# --- a lost node: 2-node DDP GAN (2 epochs of 4 batches, 16 optimizer steps), rank 1 killed at step 10 ---
CHECKPOINT_EVERY = 4  # optimizer steps (2 batches)
KILL_AT_STEP = 10  # batch 5: the newest periodic checkpoint is step 8
LOST_NODE_ARGS = [
    *GAN_ARGS,
    "callbacks=model_checkpoint",
    "callbacks.model_checkpoint.monitor=null",
    f"++callbacks.model_checkpoint.every_n_train_steps={CHECKPOINT_EVERY}",
]
DEAD_WITHIN_S = 30  # the survivor's processes are gone this soon after the kill (the pg timeout is 5 min)


def test_lost_node_requeues_and_resumes_from_the_newest_checkpoint(tmp_path: Path, job_name: str) -> None:
    reference_dir, lost_dir = tmp_path / "reference", tmp_path / "lost"
    reference_dir.mkdir()
    lost_dir.mkdir()
    reference_args = [
        *LOST_NODE_ARGS,
        f"paths.log_dir={reference_dir}/logs",
        *dump_weights(reference_dir / "weights"),
    ]
    reference_job, _ = sbatch(reference_dir, job_name, reference_args, wait=False, env=ENV)  # runs first

    marker, pids = lost_dir / "held", lost_dir / "pids"
    args = [
        *LOST_NODE_ARGS, f"paths.log_dir={lost_dir}/logs", *dump_weights(lost_dir / "weights"),
        "+callbacks.pids._target_=tests.integration.callbacks.PidFile", f"+callbacks.pids.dirpath={pids}",
        # rank 1 stops at the step (so the kill lands there); rank 0 runs on into the next all-reduce and waits
        "+callbacks.hold._target_=tests.integration.callbacks.HoldAtStep", f"+callbacks.hold.step={KILL_AT_STEP}",
        f"+callbacks.hold.marker={marker}", "+callbacks.hold.rank=1",
    ]  # fmt: skip
    job, log = sbatch(lost_dir, job_name, args, wait=False, env=ENV)
    wait_for(marker.is_file, JOB_TIMEOUT_S, f"job {job} to reach global step {KILL_AT_STEP}")
    (pid0, node0), (pid1, node1) = (
        (int(p), n) for p, n in ((pids / f"rank{r}.pid").read_text().split() for r in (0, 1))
    )
    assert (node0, node1) == ("n1", "n2"), "one rank per node"
    os.kill(pid1, signal.SIGKILL)  # the two "nodes" are slurmds on this host: the process is ours to kill
    killed = time.monotonic()

    wait_for(
        lambda: not alive(pid0), DEAD_WITHIN_S, f"rank 0 (pid {pid0} on n1) to end after rank 1 was killed"
    )
    ended_after = time.monotonic() - killed
    wait_for(lambda: job_state(job)[1] >= 1, 30, f"job {job} to be requeued")
    state, restarts = wait_until_finished(job)
    text = log.read_text()
    assert state == "COMPLETED", f"job {job} ended {state}; output:\n{text[-5000:]}"
    assert restarts == 1, f"requeued once, scontrol says Restarts={restarts}"
    requeued = f"task 1 on n2 died from SIGKILL (exit 137), restart 1 of PANTHEON_MAX_RESTARTS=3: requeued SLURM job {job}"
    assert text.count(requeued) == 1, f"one requeue, by the killed rank's task.sh:\n{text[-5000:]}"

    ckpt = run_dir(lost_dir, job) / "checkpoints" / "last.ckpt"
    resumed = [int(s) for s in re.findall(rf"resumed {re.escape(str(ckpt))} at global step (\d+)", text)]
    assert resumed == [KILL_AT_STEP - KILL_AT_STEP % CHECKPOINT_EVERY], (
        f"from the newest periodic checkpoint: {resumed}"
    )
    assert resumed[0] >= KILL_AT_STEP - CHECKPOINT_EVERY, "lost less than one checkpoint interval"

    assert wait_until_finished(reference_job)[0] == "COMPLETED", f"the reference job {reference_job} failed"
    lost, reference = load_weights(lost_dir / "weights"), load_weights(reference_dir / "weights")
    assert all(w["restart_count"] == 1 for w in lost), "final weights come from the requeued run"
    assert_same_training_state(lost[0], reference[0], "rank 0, lost node vs uninterrupted")
    # Rank 1 resumed from rank 0's checkpoint: its own BatchNorm statistics are not in it (see assert_same_weights).
    assert_same_training_state(
        lost[1], reference[1], "rank 1, lost node vs uninterrupted", parameters_only=True
    )
    print(f"lost node: rank 0 gone {ended_after:.1f} s after the kill; resumed at step {resumed[0]}")


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# --- slurm/task.sh's decision for every kind of exit, with a stand-in scontrol (no job is submitted) ---
@pytest.mark.parametrize(
    ("code", "restarts", "requeued"),
    [
        (137, 0, True),  # SIGKILL: the OOM killer, a lost node
        (134, 2, True),  # SIGABRT, the last restart allowed
        (139, 3, False),  # SIGSEGV with PANTHEON_MAX_RESTARTS=3 used up
        (138, 5, True),  # saved and asked to be requeued (USR1): not a crash, no limit
        (143, 0, False),  # SIGTERM: scancel, time limit, srun --kill-on-bad-exit
        (130, 0, False),  # SIGINT
        (1, 0, False),  # a Python exception
        (2, 0, False),  # a user error
    ],
)
def test_task_wrapper_requeues_only_signal_deaths(
    tmp_path: Path, code: int, restarts: int, requeued: bool
) -> None:
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/bash\necho "$*" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    env = {
        **os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_ID": "77", "SLURM_PROCID": "1",
        "SLURMD_NODENAME": "n2", "SLURM_RESTART_COUNT": str(restarts), "MASTER_ADDR": "127.0.0.1",
    }  # fmt: skip
    child = f"kill -{code - 128} $$" if code > 128 else f"exit {code}"
    result = subprocess.run(
        ["bash", str(ROOT / "slurm" / "task.sh"), "bash", "-c", child],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    called = calls.read_text().splitlines() if calls.exists() else []
    assert called == (["requeue 77"] if requeued else []), result.stderr
    assert result.returncode == (0 if requeued else code)
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("pantheon:")]
    if requeued:
        assert lines == [lines[0]] and lines[0].endswith("requeued SLURM job 77"), lines
    elif code in (137, 134, 139):
        assert lines == [
            "pantheon: task 1 on n2 died from SIGSEGV (exit 139); not requeued: job 77 has had its 3 restarts "
            "(PANTHEON_MAX_RESTARTS=3)"
        ]
    else:
        assert lines == [], lines
