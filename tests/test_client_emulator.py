"""EmbedClient and the official SDK against the emulator over HTTP: every input kind, error and fault."""
import numpy as np
import pytest

import embed_client
from embed_client import EmbedClient
from embed_emulator import Emulator, EmulatorConfig, synth, vectors
from tests.helpers import StaticFiles

KEY = "tlk_client_emulator_key"
MODELS = [("marengo3.0", 512), ("marengo2.7", 1024)]


@pytest.fixture(scope="module")
def emulator():
    with Emulator(EmulatorConfig(api_keys={KEY})) as emu:
        yield emu


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    files = {"cat.png": synth.png_bytes(160, 140, seed=1), "dog.jpg": synth.jpeg_bytes(200, 200, seed=2),
             "a.wav": synth.wav_bytes(14.0, 440.0), "b.mp3": synth.mp3_bytes(3.0, 300.0),
             "c.flac": synth.flac_bytes(2.0, 700.0)}
    for name, data in files.items():
        (folder / name).write_bytes(data)
    with StaticFiles(str(folder)) as server:
        yield folder, server.url, files


def _vec(result_part, index=0):
    return np.asarray(result_part.segments[index].float_, dtype=np.float32)


@pytest.mark.parametrize("model,dims", MODELS)
def test_text(emulator, model, dims):
    result = EmbedClient(api_key=KEY, base_url=emulator.base_url).create(model, text="a dog on a beach")
    assert result.model_name == model and result.image_embedding is None and result.audio_embedding is None
    np.testing.assert_allclose(_vec(result.text_embedding), vectors.text_vector("a dog on a beach", model), atol=1e-6)
    assert len(result.text_embedding.segments[0].float_) == dims


@pytest.mark.parametrize("model,dims", MODELS)
@pytest.mark.parametrize("name", ["cat.png", "dog.jpg"])
def test_image_file_and_url(emulator, media, model, dims, name):
    folder, url, files = media
    client = EmbedClient(api_key=KEY, base_url=emulator.base_url)
    by_file = client.create(model, image_file=str(folder / name))
    by_url = client.create(model, image_url=f"{url}/{name}")
    expected = vectors.image_vector(files[name], model)
    np.testing.assert_allclose(_vec(by_file.image_embedding), expected, atol=1e-6)
    np.testing.assert_allclose(_vec(by_url.image_embedding), expected, atol=1e-6)
    assert by_file.image_embedding.metadata.input_filename == name
    assert by_url.image_embedding.metadata.input_url == f"{url}/{name}"
    assert len(by_file.image_embedding.segments[0].float_) == dims


@pytest.mark.parametrize("model,dims", MODELS)
@pytest.mark.parametrize("name", ["a.wav", "b.mp3", "c.flac"])
def test_audio_file_and_url_with_offsets(emulator, media, model, dims, name):
    folder, url, files = media
    client = EmbedClient(api_key=KEY, base_url=emulator.base_url)
    by_file = client.create(model, audio_file=folder / name, audio_start_offset_sec=0.5)
    by_url = client.create(model, audio_url=f"{url}/{name}", audio_start_offset_sec=0.5)
    expected = vectors.audio_segment_vectors(files[name], model, start_offset_sec=0.5)
    for result in (by_file, by_url):
        segments = result.audio_embedding.segments
        assert [(s.start_offset_sec, s.end_offset_sec) for s in segments] == [
            (pytest.approx(a), pytest.approx(b)) for a, b, _ in expected]
        for segment, (_, _, vector) in zip(segments, expected):
            np.testing.assert_allclose(np.asarray(segment.float_, dtype=np.float32), vector, atol=1e-6)
            assert len(segment.float_) == dims


def test_long_wav_segments_on_both_models(emulator, media):
    folder, _, _ = media
    client = EmbedClient(api_key=KEY, base_url=emulator.base_url)
    three = client.create("marengo3.0", audio_file=folder / "a.wav", audio_start_offset_sec=2.0).audio_embedding
    two = client.create("marengo2.7", audio_file=folder / "a.wav", audio_start_offset_sec=2.0).audio_embedding
    assert [(s.start_offset_sec, s.end_offset_sec) for s in three.segments] == [(2.0, 8.0), (8.0, 14.0)]
    assert [(s.start_offset_sec, s.end_offset_sec) for s in two.segments] == [(2.0, 12.0)]


def test_all_three_in_one_call(emulator, media):
    folder, url, files = media
    result = EmbedClient(api_key=KEY, base_url=emulator.base_url).create(
        "marengo3.0", text="t", image_url=f"{url}/cat.png", audio_file=folder / "c.flac")
    assert result.text_embedding.segments and result.image_embedding.segments and result.audio_embedding.segments
    assert result.audio_embedding.metadata.input_filename == "c.flac"


@pytest.mark.parametrize("kwargs,exc,status,code", [
    ({"text": "x" * 5, "text_truncate": "none", "model": "marengo2.7", "long": True},
     embed_client.BadRequestError, 400, "parameter_invalid"),
    ({"image_file": b"not an image"}, embed_client.BadRequestError, 400, "parameter_invalid"),
    ({"image_url": "http://127.0.0.1:9/nothing.png"}, embed_client.BadRequestError, 400, "parameter_invalid"),
    ({"text": "x", "bogus_field": "1"}, embed_client.BadRequestError, 400, "parameter_unknown"),
])
def test_api_errors_reach_the_client_typed(emulator, kwargs, exc, status, code):
    kwargs = dict(kwargs)
    model = kwargs.pop("model", "marengo3.0")
    if kwargs.pop("long", False):
        kwargs["text"] = " ".join(["word"] * 120)
    with pytest.raises(exc) as info:
        EmbedClient(api_key=KEY, base_url=emulator.base_url).create(model, **kwargs)
    assert (info.value.status, info.value.code, info.value.is_retryable) == (status, code, False)
    assert info.value.message


def test_wrong_key_is_an_auth_error(emulator):
    with pytest.raises(embed_client.AuthError) as info:
        EmbedClient(api_key="wrong", base_url=emulator.base_url).create("marengo3.0", text="x")
    assert (info.value.status, info.value.code) == (401, "api_key_invalid")
    assert "wrong" not in str(info.value)


def test_per_minute_limit_and_daily_quota():
    with Emulator(EmulatorConfig(requests_per_minute=2)) as emu:
        client = EmbedClient(api_key=KEY, base_url=emu.base_url)
        client.create("marengo3.0", text="1")
        client.create("marengo3.0", text="2")
        with pytest.raises(embed_client.RateLimitError) as info:
            client.create("marengo3.0", text="3")
    err = info.value
    assert err.code == "too_many_requests" and err.is_retryable and not err.is_quota_exhausted
    assert 0 < err.wait_seconds <= 61 and err.rate_limit.limit == 2 and err.rate_limit.remaining == 0
    with Emulator(EmulatorConfig(requests_per_day=1, day_length_sec=3600)) as emu:
        client = EmbedClient(api_key=KEY, base_url=emu.base_url)
        client.create("marengo3.0", text="1")
        with pytest.raises(embed_client.RateLimitError) as info:
            client.create("marengo3.0", text="2")
    assert info.value.is_quota_exhausted and not info.value.is_retryable and info.value.wait_seconds > 3000


@pytest.mark.parametrize("knob,exc", [
    ({"fault_5xx_rate": 1.0}, embed_client.ServerError),
    ({"fault_drop_rate": 1.0}, embed_client.ConnectionFailedError),
    ({"fault_hang_rate": 1.0, "fault_hang_sec": 3.0}, embed_client.EmbedTimeoutError),
    ({"fault_malformed_rate": 1.0}, embed_client.MalformedResponseError),
    ({"fault_429_burst_rate": 1.0, "fault_429_burst_sec": 5.0}, embed_client.RateLimitError),
])
def test_each_fault_kind_reaches_the_client_as_a_retryable_error(knob, exc):
    with Emulator(EmulatorConfig(seed=1, **knob)) as emu:
        client = EmbedClient(api_key=KEY, base_url=emu.base_url, timeout=(2.0, 0.5))
        for _ in range(3):  # malformed bodies come in several shapes
            with pytest.raises(exc) as info:
                client.create("marengo3.0", text="x")
            assert info.value.is_retryable


def test_per_modality_fault_is_an_error_message(media):
    folder, _, _ = media
    with Emulator(EmulatorConfig(fault_modality_error_rate=1.0, seed=3)) as emu:
        result = EmbedClient(api_key=KEY, base_url=emu.base_url).create(
            "marengo3.0", text="x", image_file=folder / "cat.png")
    assert result.text_embedding.error_message and result.image_embedding.error_message
    assert not result.text_embedding.segments


def test_official_sdk_against_the_emulator_parses_results_and_errors(emulator, media):
    from twelvelabs import TwelveLabs
    from twelvelabs.core.api_error import ApiError
    from twelvelabs.errors import BadRequestError

    folder, url, files = media
    sdk = TwelveLabs(api_key=KEY, base_url=emulator.base_url)
    result = sdk.embed.create(model_name="marengo3.0", text="hello", image_url=f"{url}/cat.png",
                              audio_file=open(folder / "a.wav", "rb"), audio_start_offset_sec=2.0)
    assert [(s.start_offset_sec, s.end_offset_sec) for s in result.audio_embedding.segments] == [(2.0, 8.0), (8.0, 14.0)]
    assert result.image_embedding.metadata.input_url == f"{url}/cat.png"
    np.testing.assert_allclose(np.asarray(result.text_embedding.segments[0].float_, dtype=np.float32),
                               vectors.text_vector("hello", "marengo3.0"), atol=1e-6)
    with pytest.raises(BadRequestError) as bad:
        sdk.embed.create(model_name="marengo3.0", image_file=b"junk")
    assert bad.value.body["code"] == "parameter_invalid"
    with pytest.raises(ApiError) as auth:
        TwelveLabs(api_key="nope", base_url=emulator.base_url).embed.create(model_name="marengo3.0", text="x")
    assert auth.value.status_code == 401 and auth.value.body["code"] == "api_key_invalid"
    with Emulator(EmulatorConfig(requests_per_minute=1)) as limited:
        sdk = TwelveLabs(api_key=KEY, base_url=limited.base_url)
        sdk.embed.create(model_name="marengo3.0", text="1")
        with pytest.raises(ApiError) as rate:
            sdk.embed.create(model_name="marengo3.0", text="2")
    assert rate.value.status_code == 429 and rate.value.body["code"] == "too_many_requests"
    assert int(rate.value.headers["retry-after"]) >= 1
    with Emulator(EmulatorConfig(fault_5xx_rate=1.0, seed=2)) as broken:
        with pytest.raises(ApiError) as server:
            TwelveLabs(api_key=KEY, base_url=broken.base_url).embed.create(model_name="marengo3.0", text="x")
    assert server.value.status_code >= 500
