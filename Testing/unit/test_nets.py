"""Networks: first-stage autoencoders, discriminator, latent denoiser with patch positions."""

from __future__ import annotations

import copy

import pytest
import torch

from brainldm.errors import SettingsError
from brainldm.nets.autoencoder import (
    KLAutoencoder,
    VQAutoencoder,
    build_autoencoder,
    build_perceptual_loss,
)
from brainldm.nets.config import (
    AutoencoderConfig,
    DenoiserConfig,
    DiscriminatorConfig,
    cpu_2d,
    cpu_3d,
    cpu_kl_2d,
    cpu_kl_3d,
    thesis_3d,
    thesis_kl_2d,
    thesis_vq_3d,
)
from brainldm.nets.denoiser import (
    DISEASED,
    HEALTHY,
    NULL_LABEL,
    LatentDenoiser,
    build_denoiser,
    label_dropout,
)
from brainldm.nets.discriminator import (
    build_discriminator,
    generator_adversarial_loss,
    hinge_d_loss,
)
from brainldm.nets.position import coordinate_channels, patch_position_encoding, sinusoidal_encoding

torch.set_num_threads(min(2, torch.get_num_threads()))


def _small_kl(spatial_dims: int = 3, full_resolution_level: bool = True) -> AutoencoderConfig:
    return AutoencoderConfig(
        kind="kl",
        spatial_dims=spatial_dims,
        channels=(8, 16, 16) if full_resolution_level else (8, 16),
        latent_channels=3,
        norm_num_groups=8,
        full_resolution_level=full_resolution_level,
    )


def _small_vq(spatial_dims: int = 3) -> AutoencoderConfig:
    return AutoencoderConfig(
        kind="vq", spatial_dims=spatial_dims, channels=(8, 16, 16), latent_channels=3, num_embeddings=32
    )


def _randomise_output(model: LatentDenoiser) -> None:
    """MONAI zero-initialises the output convolution and the second convolution of every
    residual block (so an untrained model predicts 0 and no gradient reaches the
    embeddings); give those weights values to see the inputs' effect."""
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim > 1 and not p.any():
                p.normal_(0.0, 0.1)


# ----------------------------------------------------------------------------- configs


def test_compression_follows_levels() -> None:
    assert AutoencoderConfig(channels=(16, 32, 64)).compression == 4
    assert AutoencoderConfig(channels=(16, 32), full_resolution_level=False).compression == 4
    assert thesis_vq_3d().compression == 2  # channel factor [2, 4], §3.3.3
    assert thesis_kl_2d().compression == 4
    assert cpu_kl_3d().compression == 4
    assert cpu_kl_2d().compression == 4


def test_thesis_presets_match_tables() -> None:
    vq = thesis_vq_3d()
    assert (vq.kind, vq.channels, vq.num_res_blocks, vq.latent_channels, vq.num_embeddings) == (
        "vq",
        (128, 256),
        1,
        8,
        16384,
    )
    assert vq.commitment_cost == 0.25
    kl = thesis_kl_2d()
    assert (kl.channels, kl.latent_channels, kl.spatial_dims) == ((128, 256, 512), 4, 2)
    den = thesis_3d()
    assert den.channels == (128, 128, 256, 512) and den.num_res_blocks == 4
    assert den.position_embedding == "sin"
    # 64^3 patch, compression 2 -> latent 32: levels at 32, 16, 8, 4; attention at 16 and 8.
    assert den.attention_levels == (False, True, True, False)
    assert thesis_3d(latent_patch_size=16).attention_levels == (True, True, False, False)


def test_config_round_trip_and_errors() -> None:
    for cfg in (thesis_vq_3d(), cpu_kl_3d(), thesis_3d(), cpu_2d(), DiscriminatorConfig()):
        data = cfg.to_dict()
        assert type(cfg).from_dict(data) == cfg
    with pytest.raises(SettingsError, match="Unknown"):
        AutoencoderConfig.from_dict({"kind": "kl", "colour": 3})
    with pytest.raises(SettingsError, match="kind"):
        AutoencoderConfig(kind="vae")
    with pytest.raises(SettingsError, match="norm_num_groups"):
        AutoencoderConfig(channels=(12, 24), norm_num_groups=16)
    with pytest.raises(SettingsError, match="Attention"):
        AutoencoderConfig(kind="vq", attention=True)
    with pytest.raises(SettingsError, match="attention_levels"):
        DenoiserConfig(channels=(16, 32), attention_levels=(False,))
    with pytest.raises(SettingsError, match="position_embedding"):
        DenoiserConfig(position_embedding="learned")  # type: ignore[arg-type]
    with pytest.raises(SettingsError):
        build_autoencoder(thesis_3d())  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- KL autoencoder


@pytest.mark.parametrize("full_resolution_level", [True, False])
def test_kl_autoencoder_shapes_and_deterministic_encode(full_resolution_level: bool) -> None:
    torch.manual_seed(0)
    model = build_autoencoder(_small_kl(3, full_resolution_level))
    assert isinstance(model, KLAutoencoder) and model.compression == 4
    x = torch.randn(2, 4, 8, 16, 8)
    model.train()  # encode must be deterministic even in training mode
    z1, z2 = model.encode(x), model.encode(x)
    assert z1.shape == (2, 3, 2, 4, 2) == (2, *model.latent_shape((8, 16, 8)))
    assert torch.equal(z1, z2)
    mu, sigma = model.posterior(x)
    assert torch.equal(mu, z1) and (sigma > 0).all()
    assert model.decode(z1).shape == x.shape
    # Training forward samples the posterior; eval forward uses the mean.
    out_a, out_b = model(x), model(x)
    assert not torch.equal(out_a.latent, out_b.latent)
    model.eval()
    out = model(x)
    assert torch.equal(out.latent, z1)
    expected_kl = 0.5 * (mu**2 + sigma**2 - torch.log(sigma**2) - 1).flatten(1).sum(1).mean()
    assert out.regularisation_loss.item() == pytest.approx(expected_kl.item(), rel=1e-4)


def test_kl_autoencoder_backward_reaches_encoder_and_decoder() -> None:
    model = build_autoencoder(_small_kl(2)).train()
    x = torch.randn(2, 4, 16, 16)
    out = model(x)
    assert out.reconstruction.shape == x.shape
    loss = (out.reconstruction - x).abs().mean() + 1e-6 * out.regularisation_loss
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    assert grads["net.encoder.blocks.0.conv.weight"].abs().sum() > 0
    assert any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("net.decoder"))


def test_attention_flag_builds_attention_only_when_asked() -> None:
    def count_attention(cfg: AutoencoderConfig) -> int:
        return sum("attn" in name for name, _ in build_autoencoder(cfg).named_modules())

    assert count_attention(_small_kl(2)) == 0
    cfg = _small_kl(2)
    cfg.attention = True
    assert count_attention(cfg) > 0


def test_image_checks_give_clear_errors() -> None:
    model = build_autoencoder(_small_kl(3))
    with pytest.raises(ValueError, match="multiple of the autoencoder's compression 4"):
        model.encode(torch.randn(1, 4, 8, 10, 8))
    with pytest.raises(ValueError, match="shape"):
        model.encode(torch.randn(1, 3, 8, 8, 8))
    with pytest.raises(ValueError, match="latent"):
        model.decode(torch.randn(1, 4, 4, 4, 4))


# ----------------------------------------------------------------------------- VQ autoencoder


def test_vq_autoencoder_encode_is_on_codebook_and_deterministic() -> None:
    torch.manual_seed(0)
    model = build_autoencoder(_small_vq(3))
    assert isinstance(model, VQAutoencoder) and model.compression == 4
    x = torch.randn(1, 4, 16, 16, 8)
    model.train()
    book_before = model.codebook.detach().clone()
    z = model.encode(x)
    assert torch.equal(model.codebook, book_before), "encode must not update the codebook"
    assert z.shape == (1, 3, 4, 4, 2)
    assert torch.equal(z, model.encode(x))
    vectors = z.movedim(1, -1).reshape(-1, 3)
    assert all(bool((model.codebook == v).all(dim=1).any()) for v in vectors)
    assert model.decode(z).shape == x.shape


def test_vq_quantiser_matches_monai_ema_quantiser() -> None:
    torch.manual_seed(1)
    ours = build_autoencoder(_small_vq(3)).train()
    monai = copy.deepcopy(ours)
    z_e = torch.randn(2, 3, 4, 4, 4)
    quantised, loss = ours.quantize(z_e)
    monai_loss, monai_quantised = monai.net.quantizer(z_e)
    assert torch.allclose(quantised, monai_quantised, atol=1e-6)
    assert loss.item() == pytest.approx(monai_loss.item(), rel=1e-5)
    ema, ref = ours.net.quantizer.quantizer, monai.net.quantizer.quantizer
    assert torch.allclose(ema.ema_cluster_size, ref.ema_cluster_size, atol=1e-6)
    assert torch.allclose(ema.embedding.weight, ref.embedding.weight, atol=1e-5)


def test_vq_forward_backward_straight_through() -> None:
    torch.manual_seed(2)
    model = build_autoencoder(_small_vq(2)).train()
    x = torch.randn(2, 4, 16, 16)
    book_before = model.codebook.detach().clone()
    out = model(x)
    assert out.reconstruction.shape == x.shape and out.latent.shape == (2, 3, 4, 4)
    assert not torch.equal(model.codebook, book_before), "training forward updates the EMA codebook"
    ((out.reconstruction - x).abs().mean() + out.regularisation_loss).backward()
    first_conv = next(p for n, p in model.named_parameters() if n.startswith("net.encoder"))
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0


def test_thesis_vq_preset_runs_on_a_small_patch() -> None:
    model = build_autoencoder(thesis_vq_3d()).eval()
    with torch.inference_mode():
        z = model.encode(torch.randn(1, 4, 8, 8, 8))
        assert z.shape == (1, 8, 4, 4, 4)
        assert model.decode(z).shape == (1, 4, 8, 8, 8)


# ----------------------------------------------------------------------------- discriminator & losses


def test_discriminator_and_hinge_losses() -> None:
    disc = build_discriminator(DiscriminatorConfig(spatial_dims=3, channels=8, num_layers=3))
    logits = disc(torch.randn(2, 4, 32, 32, 32))
    assert logits.ndim == 5 and logits.shape[:2] == (2, 1)
    real = torch.tensor([2.0, 0.5, -1.0])
    fake = torch.tensor([-2.0, 0.0, 1.0])
    # 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake)))
    expected = 0.5 * ((0 + 0.5 + 2.0) / 3 + (0 + 1.0 + 2.0) / 3)
    assert hinge_d_loss(real, fake).item() == pytest.approx(expected)
    assert generator_adversarial_loss(fake).item() == pytest.approx(1.0 / 3)


def test_perceptual_loss_is_disabled_without_local_weights(tmp_path) -> None:
    assert build_perceptual_loss(3) is None
    assert build_perceptual_loss(2, tmp_path / "missing.pth") is None


# ----------------------------------------------------------------------------- positions


def test_sinusoidal_encoding_is_eq_3_1() -> None:
    pos = torch.tensor([0.0, 3.0, 17.0])
    d = 8
    enc = sinusoidal_encoding(pos, d)
    for i, p in enumerate(pos.tolist()):
        for n in range(d // 2):
            angle = p / 10000 ** (2 * n / d)
            assert enc[i, 2 * n].item() == pytest.approx(torch.sin(torch.tensor(angle)).item(), abs=1e-6)
            assert enc[i, 2 * n + 1].item() == pytest.approx(torch.cos(torch.tensor(angle)).item(), abs=1e-6)
    start = torch.tensor([[1.0, 2.0, 3.0]])
    cat = patch_position_encoding(start, d)
    assert cat.shape == (1, 24)
    assert torch.allclose(cat[0, 8:16], sinusoidal_encoding(torch.tensor(2.0), d))


def test_coordinate_channels_values() -> None:
    start = torch.tensor([[0.0, 4.0], [10.0, 0.0]])
    extent = torch.tensor([[20.0, 8.0], [20.0, 8.0]])
    coords = coordinate_channels(start, extent, (10, 4))
    assert coords.shape == (2, 2, 10, 4)
    assert coords[0, 0, 0, 0].item() == pytest.approx(2 * 0.5 / 20 - 1)
    assert coords[1, 0, 9, 0].item() == pytest.approx(2 * 19.5 / 20 - 1)
    assert coords[0, 1, 0, 3].item() == pytest.approx(2 * 7.5 / 8 - 1)
    # The two halves of the x axis seen through two windows tile the whole-volume coordinates.
    whole = coordinate_channels(torch.zeros(1, 2), extent[:1], (20, 8))
    assert torch.allclose(torch.cat([coords[0, 0], coords[1, 0]], 0), whole[0, 0, :, :4])


# ----------------------------------------------------------------------------- denoiser


def _small_denoiser(spatial_dims: int, position_embedding: str) -> DenoiserConfig:
    return DenoiserConfig(
        spatial_dims=spatial_dims,
        latent_channels=3,
        channels=(8, 16),
        attention_levels=(False, True),
        mid_attention=True,
        num_head_channels=8,
        norm_num_groups=8,
        position_embedding=position_embedding,  # type: ignore[arg-type]
        position_dim=8,
    )


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("position_embedding", ["none", "sin", "coords"])
def test_denoiser_forward_backward(spatial_dims: int, position_embedding: str) -> None:
    torch.manual_seed(0)
    model = build_denoiser(_small_denoiser(spatial_dims, position_embedding))
    size = (8, 4, 6)[:spatial_dims]
    z = torch.randn(2, 3, *size)
    t = torch.tensor([3, 999])
    labels = torch.tensor([HEALTHY, NULL_LABEL])
    start = torch.tensor([[0.0] * spatial_dims, [4.0] * spatial_dims])
    extent = torch.tensor([[24.0] * spatial_dims] * 2)
    eps = model(z, t, labels, start=start, extent=extent)
    assert eps.shape == z.shape
    # MONAI zero-initialises the output convolution: an untrained denoiser predicts 0.
    assert torch.count_nonzero(eps) == 0
    _randomise_output(model)
    eps = model(z, t, labels, start, extent)
    assert eps.abs().sum() > 0
    eps.square().mean().backward()
    assert model.conv_in.conv.weight.grad.abs().sum() > 0
    if position_embedding == "sin":
        assert model.position_embedding.linear.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_sin_embedding_depends_on_patch_start(spatial_dims: int) -> None:
    torch.manual_seed(0)
    model = build_denoiser(_small_denoiser(spatial_dims, "sin"))
    _randomise_output(model)
    z = torch.randn(1, 3, *(4,) * spatial_dims)
    a = model(z, 10, HEALTHY, start=torch.zeros(spatial_dims))
    b = model(z, 10, HEALTHY, start=torch.full((spatial_dims,), 12.0))
    assert not torch.allclose(a, b)
    emb_a = model.position_embedding(torch.zeros(1, spatial_dims))
    emb_b = model.position_embedding(torch.ones(1, spatial_dims))
    assert not torch.allclose(emb_a, emb_b)
    # start=None means start 0.
    assert torch.equal(model(z, 10, HEALTHY), a)


def test_coords_model_runs_on_any_window_and_agrees_with_its_position() -> None:
    torch.manual_seed(0)
    model = build_denoiser(_small_denoiser(3, "coords"))
    _randomise_output(model)
    extent = torch.tensor([16.0, 24.0, 8.0])
    # Trained on 8^3 patches: runs on a 16x24x8 whole volume and on a 4x8x2 latent? (multiple of 2)
    for size in [(8, 8, 8), (16, 24, 8), (2, 6, 4)]:
        z = torch.randn(1, 3, *size)
        assert model(z, 5, DISEASED, start=torch.zeros(3), extent=extent).shape == z.shape
    # The position matters: the same content at another start gives another prediction.
    z = torch.randn(1, 3, 8, 8, 8)
    a = model(z, 5, HEALTHY, start=torch.tensor([0.0, 0.0, 0.0]), extent=extent)
    b = model(z, 5, HEALTHY, start=torch.tensor([8.0, 16.0, 0.0]), extent=extent)
    assert not torch.allclose(a, b)


def test_labels_timesteps_broadcast_and_null_label() -> None:
    torch.manual_seed(0)
    model = build_denoiser(_small_denoiser(2, "none"))
    _randomise_output(model)
    z = torch.randn(3, 3, 8, 8)
    healthy = model(z, 100, HEALTHY)
    null = model(z, torch.tensor([100]), torch.full((3,), NULL_LABEL))
    assert healthy.shape == null.shape == z.shape
    assert not torch.allclose(healthy, null), "the null class has its own embedding"
    assert model.null_label == NULL_LABEL == 2
    with pytest.raises(ValueError, match="labels"):
        model(z, 100, 3)
    with pytest.raises(ValueError, match="multiple of 2"):
        model(torch.randn(1, 3, 8, 7), 100, HEALTHY)
    with pytest.raises(ValueError, match="shape"):
        model(torch.randn(1, 4, 8, 8), 100, HEALTHY)


def test_label_dropout() -> None:
    labels = torch.randint(0, 2, (4000,))
    dropped = label_dropout(labels, 0.2, torch.Generator().manual_seed(0))
    is_null = dropped == NULL_LABEL
    assert 0.17 < is_null.float().mean().item() < 0.23
    assert torch.equal(dropped[~is_null], labels[~is_null])
    again = label_dropout(labels, 0.2, torch.Generator().manual_seed(0))
    assert torch.equal(dropped, again)
    assert torch.equal(label_dropout(labels, 0.0), labels)
    assert (label_dropout(labels, 1.0) == NULL_LABEL).all()
    with pytest.raises(ValueError):
        label_dropout(labels, 1.5)


def test_condition_channels() -> None:
    cfg = _small_denoiser(2, "coords")
    cfg.condition_channels = 2
    model = build_denoiser(DenoiserConfig.from_dict(cfg.to_dict()))
    assert model.conv_in.conv.in_channels == 3 + 2 + 2
    z = torch.randn(1, 3, 8, 8)
    assert model(z, 1, HEALTHY, condition=torch.randn(1, 2, 8, 8)).shape == z.shape
    with pytest.raises(ValueError, match="condition"):
        model(z, 1, HEALTHY)


def test_cpu_presets_build_and_run() -> None:
    for cfg in (cpu_3d(), cpu_2d(), cpu_3d("sin")):
        model = build_denoiser(cfg).eval()
        size = (cfg.size_multiple * 2,) * cfg.spatial_dims
        with torch.inference_mode():
            assert model(torch.randn(1, cfg.latent_channels, *size), 3, HEALTHY).shape[2:] == size
    for cfg in (cpu_kl_3d(), cpu_kl_2d()):
        model = build_autoencoder(cfg).eval()
        size = (8,) * cfg.spatial_dims
        with torch.inference_mode():
            assert model.reconstruct(torch.randn(1, 4, *size)).shape[2:] == size
