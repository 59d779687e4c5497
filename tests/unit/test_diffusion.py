"""The text-to-image diffusion model: tiny experiment end to end, export, LoRA, EMA, min-SNR, cached latents.

The tiny pipeline is built once per module (seeded, offline) and images are 32 px, so the file runs in about a
minute on 2 CPU cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import load_file

from pantheon import export, sample
from pantheon.callbacks.ema import ema_weights
from pantheon.data.captioned_images import CaptionedImagesDataModule, ensure_shapes_dataset
from pantheon.models.diffusion.losses import min_snr_weights
from pantheon.models.diffusion.module import DiffusionModule
from pantheon.models.diffusion.tiny import build_tiny_components, ensure_tiny_pipeline
from pantheon.train import train
from pantheon.utils.errors import UserError
from pantheon.utils.offline import host_reachable
from tests.conftest import FAST, compose_train, run_cli

PROMPTS = ["a photo of a red circle", "a photo of a blue square"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return ensure_tiny_pipeline(tmp_path_factory.mktemp("cache") / "tiny-sd")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return ensure_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", n=24, size=32)


def tiny_overrides(tiny: Path, shapes: Path, steps: int = 4, *extra: str) -> list[str]:
    """The tiny experiment at 32 px, `steps` optimizer steps, a grid and a checkpoint every 2 steps."""
    return [
        *FAST,
        "experiment=flowers_sd_tiny",
        f"model.pretrained_model={tiny}",
        f"data.data_dir={shapes}",
        "data.resolution=32",
        "data.batch_size=2",
        f"trainer.max_steps={steps}",
        "callbacks.sample_grid.every_n_steps=2",
        "callbacks.model_checkpoint.every_n_train_steps=2",
        f"model.validation_prompts=[{','.join(PROMPTS)}]",
        "model.validation_images_per_prompt=1",
        "model.validation_steps=2",
        "model.validation_resolution=32",
        "ckpt_path=null",
        *extra,
    ]


@pytest.fixture(scope="module")
def trained_run(tiny: Path, shapes: Path, tmp_path_factory) -> tuple[Path, dict]:
    run = tmp_path_factory.mktemp("tiny") / "run"
    metrics = train(compose_train(run, tiny_overrides(tiny, shapes)))
    return run, metrics


def unet_weights(folder: Path) -> dict[str, torch.Tensor]:
    return UNet2DConditionModel.from_pretrained(folder, subfolder="unet").state_dict()


def test_tiny_experiment_trains_logs_grids_and_exports(trained_run) -> None:
    run, metrics = trained_run
    assert torch.isfinite(torch.tensor(metrics["train/loss"]))
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["global_step"] == 4
    assert not any(k.startswith(("vae.", "text_encoder.", "frozen.")) for k in checkpoint["state_dict"]), (
        "frozen parts stay out of checkpoints"
    )
    from torchvision.io import read_image

    grids = sorted((run / "samples").glob("*.png"))
    assert len(grids) == 2, "every 2 of 4 steps"
    assert read_image(str(grids[0])).shape == (3, 2 * 34 + 2, 34 + 2), (
        "one row per prompt, 32 px, 2 px padding"
    )
    assert (run / "pipeline" / "model_index.json").is_file()


def test_exported_pipeline_loads_with_stock_diffusers_and_the_sample_cli(trained_run, tmp_path: Path) -> None:
    run, _ = trained_run
    pipe = StableDiffusionPipeline.from_pretrained(run / "pipeline")
    pipe.set_progress_bar_config(disable=True)
    images = pipe(PROMPTS[0], num_inference_steps=2, height=32, width=32, output_type="np").images
    assert images.shape == (1, 32, 32, 3)

    out = sample.main([f"pipeline={run / 'pipeline'}", f"prompt={PROMPTS[1]}", "n=3", "steps=2", "size=48",
                       f"out={tmp_path / 'x.npy'}"])  # fmt: skip
    import numpy as np

    array = np.load(out)
    assert array.shape == (3, 3, 48, 48) and array.dtype == np.uint8
    again = np.load(sample.main([f"pipeline={run / 'pipeline'}", f"prompt={PROMPTS[1]}", "n=3", "steps=2",
                                 "size=48", f"out={tmp_path / 'y.npy'}"]))  # fmt: skip
    assert (array == again).all(), "same seed, same images"


def test_a_diffusion_checkpoint_given_to_gan_sampling_is_one_line(
    trained_run, tmp_path: Path, capsys
) -> None:
    run, _ = trained_run
    ckpt = run / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=False)["pantheon"]["kind"] == "diffusion"
    with pytest.raises(SystemExit) as exit_info:
        sample.main([f"ckpt={ckpt}", "digit=5", f"out={tmp_path / 'x.png'}"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and "holds a diffusion model (DiffusionModule)" in line
    assert "pipeline=<run>/pipeline" in line


def test_sample_cli_bad_pipeline_and_size(trained_run, tmp_path: Path, capsys) -> None:
    run, _ = trained_run
    for args, message in [
        ([f"pipeline={tmp_path}", "prompt=x"], "has no model_index.json"),
        ([f"pipeline={run / 'pipeline'}", "prompt=x", "size=30"], "needs a multiple of"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            sample.main([*args, "n=1", f"out={tmp_path / 'x.png'}"])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_exported_weights_are_the_ema_weights(trained_run, tmp_path: Path) -> None:
    run, _ = trained_run
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    shadow = checkpoint["callbacks"]["EMA"]["shadow"]
    exported = unet_weights(run / "pipeline")
    live_differs = False
    for name, value in shadow.items():
        key = name.removeprefix("unet.")
        torch.testing.assert_close(exported[key], value, msg=f"{key} is not the EMA value")
        live_differs |= not torch.equal(checkpoint["state_dict"][name], value)
    assert live_differs, "after 4 steps the EMA must differ from the live weights"

    # `python -m pantheon.export` on the checkpoint goes through the same code path and EMA.
    (again,) = export.main([f"ckpt={run / 'checkpoints' / 'last.ckpt'}", f"out={tmp_path / 'export'}"])
    for key, value in unet_weights(again).items():
        torch.testing.assert_close(value, exported[key])


def test_lora_run_saves_adapters_that_load_with_stock_diffusers(
    tiny: Path, shapes: Path, tmp_path: Path
) -> None:
    """Also runs the other training options once: bf16 mixed precision, v-prediction, noise offset, caption
    dropout, gradient checkpointing, eager attention and cached latents."""
    extra = ["model.lora_rank=4", "model.prediction_type=v_prediction", "model.noise_offset=0.1",
             "model.caption_dropout=0.5", "model.gradient_checkpointing=true", "model.attention=eager",
             "model.lr=1e-2", "callbacks.sample_grid.every_n_steps=0", "data.cache_latents=true",
             "trainer.precision=bf16-mixed"]  # fmt: skip
    run = tmp_path / "run"
    train(compose_train(run, tiny_overrides(tiny, shapes, 2, *extra)))

    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert checkpoint["state_dict"] and all("lora" in k for k in checkpoint["state_dict"]), "adapters only"
    scheduler = json.loads((run / "pipeline" / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction"
    vae = load_file(run / "pipeline" / "vae" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in vae.values()} == {torch.float32}, (
        "frozen parts export in float32 after bf16 training"
    )

    # base + load_lora_weights(adapters) == the merged exported pipeline == the EMA adapters on the module
    base = StableDiffusionPipeline.from_pretrained(tiny)
    base.load_lora_weights(run / "pipeline" / "lora")
    merged = StableDiffusionPipeline.from_pretrained(run / "pipeline")
    module = DiffusionModule.load_from_checkpoint(run / "checkpoints" / "last.ckpt")
    torch.manual_seed(0)
    latents, t, context = torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.randn(2, 77, 32)
    with torch.no_grad():
        plain = StableDiffusionPipeline.from_pretrained(tiny).unet(latents, t, context).sample
        adapted = base.unet(latents, t, context).sample
        torch.testing.assert_close(merged.unet(latents, t, context).sample, adapted, atol=1e-4, rtol=1e-4)
        with ema_weights(module):
            torch.testing.assert_close(
                module.unet.eval()(latents, t, context).sample, adapted, atol=1e-4, rtol=1e-4
            )
    assert not torch.allclose(plain, adapted, atol=1e-4), "the adapters changed the UNet"


def test_tiny_build_is_seeded_and_its_tokenizer_has_clip_ids(tiny: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny, subfolder="tokenizer")
    assert tokenizer("a photo of a sunflower").input_ids == [49406, 320, 1125, 539, 320, 21559, 49407]
    rebuilt = build_tiny_components()["unet"].state_dict()
    for key, value in unet_weights(tiny).items():
        assert torch.equal(rebuilt[key], value), f"{key} differs between two builds"


def test_min_snr_weights_equal_the_formula() -> None:
    alphas_cumprod = torch.tensor([0.99, 0.9, 0.5, 0.01])
    timesteps = torch.tensor([0, 1, 2, 3])
    snr = torch.tensor([99.0, 9.0, 1.0, 0.01 / 0.99])
    eps = min_snr_weights(alphas_cumprod, timesteps, gamma=5.0, prediction_type="epsilon")
    v = min_snr_weights(alphas_cumprod, timesteps, gamma=5.0, prediction_type="v_prediction")
    torch.testing.assert_close(eps, torch.tensor([5 / 99, 5 / 9, 1.0, 1.0]))
    torch.testing.assert_close(v, torch.tensor([5 / 100, 5 / 10, 1 / 2, snr[3] / (snr[3] + 1)]))

    from diffusers import DDPMScheduler
    from diffusers.training_utils import compute_snr

    scheduler = DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([0, 100, 999])
    reference = compute_snr(scheduler, t)
    expected = torch.minimum(reference, torch.full_like(reference, 5.0)) / reference
    torch.testing.assert_close(min_snr_weights(scheduler.alphas_cumprod, t, 5.0, "epsilon"), expected)


def test_cached_latents_give_the_same_loss_as_on_the_fly(tiny: Path, shapes: Path) -> None:
    module = DiffusionModule(str(tiny), snr_gamma=5.0, noise_offset=0.05)
    dm = CaptionedImagesDataModule(data_dir=str(shapes), resolution=32, batch_size=4, random_flip=False)
    dm.setup()
    images = [dm.train_set[i] for i in range(4)]
    pixels = torch.stack([item["pixel_values"] for item in images])
    captions = [item["captions"][0] for item in images]

    dm.cache_latents_with(module.encode_moments)
    cached = torch.stack([dm.train_set.moments[i, 0] for i in range(4)])
    torch.testing.assert_close(dm.train_set.moments[:4, 1], module.encode_moments(pixels.flip(-1)))

    torch.manual_seed(3)
    on_the_fly = module.training_step({"pixel_values": pixels, "text": captions}, 0)
    torch.manual_seed(3)
    from_cache = module.training_step({"latent_moments": cached, "text": captions}, 0)
    torch.testing.assert_close(from_cache, on_the_fly)
    assert [dm.train_set[i]["captions"][0] for i in range(4)] == captions


def test_offline_hub_id_fails_fast_with_one_line(fast_cfg, shapes: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("PANTHEON_OFFLINE", "1")
    host_reachable.cache_clear()
    with pytest.raises(UserError, match=r"model.pretrained_model=.* unreachable .* data.data_dir="):
        DiffusionModule("stable-diffusion-v1-5/stable-diffusion-v1-5")
    with pytest.raises(SystemExit) as exit_info:
        train(fast_cfg("experiment=flowers_sd", "trainer=cpu", f"data.data_dir={shapes}"))
    host_reachable.cache_clear()
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "is a Hugging Face Hub id but the Hub is unreachable" in errors[0]


def test_missing_pipeline_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        DiffusionModule(str(tmp_path / "absent"))
    with pytest.raises(UserError, match=r"has no model_index\.json"):
        DiffusionModule(str(tmp_path))


@pytest.mark.slow
def test_ddp_two_cpu_processes(tiny: Path, shapes: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    overrides = [o for o in tiny_overrides(tiny, shapes, 2) if not o.startswith("+trainer.limit_val")]
    result = run_cli("pantheon.train", f"hydra.run.dir={run}", "trainer=ddp_cpu", "callbacks.sample_grid.every_n_steps=0",
                     *overrides, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert (run / "pipeline" / "model_index.json").is_file()


# --- bad input: the checks shared by every pipeline loader (configs only, no weights: milliseconds) ---


def config_only_pipeline(
    folder: Path, latent_channels: int = 4, vae: bool = True, in_index: bool = True
) -> Path:
    """A pipeline folder as far as the checks read it: model_index.json and the VAE's and UNet's configs."""
    index = {"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}
    if in_index:
        index["vae"] = ["diffusers", "AutoencoderKL"]
    configs = {"model_index.json": index,
               "unet/config.json": {"_class_name": "UNet2DConditionModel", "block_out_channels": [32, 64],
                                    "in_channels": 4}}  # fmt: skip
    if vae:
        configs["vae/config.json"] = {"_class_name": "AutoencoderKL", "block_out_channels": [32, 64, 64],
                                      "latent_channels": latent_channels}  # fmt: skip
    for name, config in configs.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(json.dumps(config))
    return folder


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vae": False}, "has no vae/ subfolder"),
        ({"in_index": False}, "model_index.json names no vae"),
        (
            {"latent_channels": 8},
            "its VAE makes 8-channel latents (vae latent_channels) but its UNet takes 4",
        ),
    ],
)
def test_a_pipeline_without_a_fitting_vae_is_one_line(tmp_path: Path, kwargs: dict, message: str) -> None:
    from pantheon.models.diffusion.checks import inspect_pipeline

    good = inspect_pipeline(str(config_only_pipeline(tmp_path / "good")), field="pipeline")
    assert (good.vae_factor, good.side_multiple) == (4, 8)
    folder = config_only_pipeline(tmp_path / "bad", **kwargs)
    with pytest.raises(UserError, match=f"^pipeline={folder}.*") as info:
        inspect_pipeline(str(folder), field="pipeline")
    assert message in str(info.value) and "\n" not in str(info.value)


def test_an_image_side_the_autoencoder_cannot_take_names_the_nearest_ones() -> None:
    from pantheon.models.diffusion.checks import check_side

    for good in (None, 4, 32):
        check_side("data.resolution", good, 4, "the autoencoder")
    for side, use in [(30, "use data.resolution=28 or data.resolution=32"), (2, "use data.resolution=4")]:
        with pytest.raises(
            UserError, match=f"^data.resolution={side}: the autoencoder needs a multiple of 4 "
        ):
            check_side("data.resolution", side, 4, "the autoencoder")
        with pytest.raises(UserError, match=use):
            check_side("data.resolution", side, 4, "the autoencoder")


class WordTokenizer:
    """A stand-in tokenizer: one token per word plus start and end, as CLIP counts them."""

    model_max_length = 6

    def __call__(self, texts: list[str], truncation: bool, verbose: bool):
        assert truncation is False, "counting must not cut"
        return type("Encoding", (), {"input_ids": [[0, *text.split(), 1] for text in texts]})


def test_a_prompt_longer_than_the_text_encoder_is_refused_in_sampling_and_serving() -> None:
    from pantheon.models.diffusion.checks import check_prompt
    from pantheon.serving.validation import (
        DiffusionLimits,
        RequestError,
        remember_tokenizer,
        validate_diffusion,
    )

    check_prompt(WordTokenizer(), "a b c d")  # 6 tokens: fits
    with pytest.raises(
        UserError, match=r"^prompt is 7 tokens, the text encoder takes at most 6: shorten it$"
    ):
        check_prompt(WordTokenizer(), "a b c d e")
    remember_tokenizer("words", WordTokenizer())
    limits = DiffusionLimits(max_prompt_tokens=6, tokenizer="words")
    assert validate_diffusion({"prompt": "a b c d"}, limits).prompt == "a b c d"
    with pytest.raises(RequestError) as info:
        validate_diffusion({"prompt": "a b c d e"}, limits)
    assert info.value.field == "prompt"
    assert str(info.value) == (
        "prompt: is 7 tokens, the text encoder takes at most 6: shorten it; allowed: text of at most 6 tokens"
    )
    with pytest.raises(RequestError, match="36 is not a multiple of 8: use 32 or 40"):
        validate_diffusion({"prompt": "a", "resolution": 36}, limits)


def test_long_training_captions_are_counted_in_one_warning(shapes: Path, caplog) -> None:
    dm = CaptionedImagesDataModule(data_dir=str(shapes), resolution=32, batch_size=2)
    dm.setup("fit")
    count = lambda texts: [len(text.split()) + 2 for text in texts]  # noqa: E731
    with caplog.at_level("WARNING"):
        assert dm.warn_long_captions(count, max_tokens=100) == 0
        assert dm.warn_long_captions(count, max_tokens=6) > 0  # "a photo of a <colour> <shape>": 8 tokens
    (warning,) = [r.getMessage() for r in caplog.records if "longer than the text encoder" in r.getMessage()]
    assert "captions are longer than the text encoder's 6 tokens: training cuts them" in warning
