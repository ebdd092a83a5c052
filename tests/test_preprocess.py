"""Reading photos of every kind a clinic may send, and the shared preprocessing."""
import cv2
import numpy as np
import pytest

from edgederm.augment import AugmentConfig, augment_image
from edgederm.errors import ImageError
from edgederm.preprocess import PreprocessConfig, load_input, normalize, read_image
from tests.helpers import write_jpeg


def _rgb(h=48, w=64):
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_round_trip_is_rgb(tmp_path):
    rgb = _rgb()
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)


def test_rgba_drops_alpha(tmp_path):
    rgb = _rgb()
    rgba = np.dstack([cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), np.full(rgb.shape[:2], 7, np.uint8)])
    cv2.imwrite(str(tmp_path / "a.png"), rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgb)


def test_16_bit_is_scaled_to_8_bit(tmp_path):
    rgb = _rgb()
    cv2.imwrite(str(tmp_path / "a.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.uint16) * 257)
    img = read_image(tmp_path / "a.png")
    assert img.dtype == np.uint8
    np.testing.assert_array_equal(img, rgb)


def test_grayscale_is_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "grey.jpg"), _rgb()[:, :, 0])
    with pytest.raises(ImageError, match=r"grey\.jpg: grayscale"):
        read_image(tmp_path / "grey.jpg")


def test_truncated_jpeg_is_refused(tmp_path):
    data = write_jpeg(tmp_path / "full.jpg", _rgb(256, 256)).read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(ImageError, match=r"cut\.jpg: truncated"):
        read_image(tmp_path / "cut.jpg")


def test_truncated_png_is_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "full.png"), _rgb(128, 128))
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:-40])
    with pytest.raises(ImageError, match=r"cut\.png: truncated"):
        read_image(tmp_path / "cut.png")


@pytest.mark.parametrize("content, message", [(b"", "empty file"), (b"not an image at all", "not a readable image")])
def test_empty_and_corrupt_files_are_refused(tmp_path, content, message):
    (tmp_path / "bad.jpg").write_bytes(content)
    with pytest.raises(ImageError, match=rf"bad\.jpg: {message}"):
        read_image(tmp_path / "bad.jpg")


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match=r"nope\.jpg: file not found"):
        read_image(tmp_path / "nope.jpg")


def test_load_input_resizes_and_normalises(tmp_path):
    img = np.zeros((40, 60, 3), np.uint8)
    img[..., 0] = 255
    cv2.imwrite(str(tmp_path / "red.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    x = load_input(tmp_path / "red.png", PreprocessConfig(size=32))
    assert x.shape == (3, 32, 32) and x.dtype == np.float32
    # channel 0 is red at 255: (1 - 0.485) / 0.229; channel 1 is 0: -0.456 / 0.224
    assert x[0].mean() == pytest.approx((1 - 0.485) / 0.229, abs=1e-5)
    assert x[1].mean() == pytest.approx(-0.456 / 0.224, abs=1e-5)


def test_preprocess_config_round_trips_and_refuses_unknown_rules():
    cfg = PreprocessConfig(size=160, resize="linear")
    assert PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(Exception, match="unknown resize rule"):
        PreprocessConfig(resize="nearest-ish")


def test_center_crop_resizes_the_central_square_here_and_in_the_manifest_config(tmp_path):
    from edgederm.models import ModelConfig
    from edgederm.preprocess import load_input, resize_image
    img = _rgb(96, 144)                                    # 3:2, like the release's 768 x 512
    cropped = resize_image(img, 48, "area", "center")
    np.testing.assert_array_equal(cropped, cv2.resize(img[:, 24:120], (48, 48), interpolation=cv2.INTER_AREA))
    assert not np.array_equal(cropped, resize_image(img, 48, "area"))   # "none" squashes the whole photo
    cfg = ModelConfig(img_size=48, crop="center").preprocess()
    assert cfg.crop == "center" and PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    cv2.imwrite(str(tmp_path / "photo.png"), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    np.testing.assert_allclose(load_input(tmp_path / "photo.png", cfg), normalize(cropped, cfg.mean, cfg.std))
    old_manifest = {k: v for k, v in PreprocessConfig(size=48).to_dict().items() if k != "crop"}
    assert PreprocessConfig.from_dict(old_manifest).crop == "none"      # bundles written before crop existed
    with pytest.raises(Exception, match="unknown crop rule 'middle'"):
        PreprocessConfig(crop="middle")


def _exif_jpeg(path, rgb, orientation: int):
    """A JPEG whose EXIF says how to turn it (6: rotate 90 degrees clockwise to display)."""
    import struct
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 95])
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHIHH", 0x0112, 3, 1, orientation, 0) + b"\0" * 4
    app1 = b"Exif\x00\x00" + tiff
    data = buf.tobytes()
    path.write_bytes(data[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + data[2:])
    return path


@pytest.mark.parametrize("short, size, factor", [(3000, 224, 4), (3000, 128, 8), (512, 224, 1), (512, 128, 2),
                                                 (900, 224, 2), (447, 112, 2), (449, 224, 1)])
def test_reduced_decoding_takes_the_largest_reduction_that_keeps_twice_the_input(tmp_path, short, size, factor):
    from edgederm.preprocess import jpeg_reduction
    ok, buf = cv2.imencode(".jpg", np.zeros((short, short * 4 // 3, 3), np.uint8))
    assert jpeg_reduction(buf.tobytes(), 2 * size) == factor
    assert -(-short // factor) >= 2 * size or factor == 1          # never below twice the input
    assert jpeg_reduction(buf.tobytes(), None) == 1                   # "full": no reduction


def test_reduced_decoding_keeps_orientation_colour_and_refusals(tmp_path):
    from edgederm.preprocess import jpeg_reduction, read_input_image
    img = np.zeros((800, 1200, 3), np.uint8)
    img[:200, :400] = (255, 0, 0)                                   # a red block at the top left
    photo = _exif_jpeg(tmp_path / "phone.jpg", img, orientation=6)
    cfg = PreprocessConfig(size=100, decode="reduced")
    assert jpeg_reduction(photo.read_bytes(), cfg.min_decoded_side) == 4
    full, reduced = read_image(photo), read_input_image(photo, cfg)
    assert full.shape == (1200, 800, 3) and reduced.shape == (300, 200, 3)   # turned upright, a quarter of each side
    for decoded, scale in ((full, 1), (reduced, 4)):               # clockwise: the block is now top right
        red = (decoded[..., 0] > 200) & (decoded[..., 1] < 60)
        rows, cols = np.nonzero(red)
        assert rows.max() < 400 // scale and cols.min() >= 600 // scale
    small = cv2.resize(full, (200, 300), interpolation=cv2.INTER_AREA).astype(int)
    assert np.abs(small - reduced.astype(int)).mean() < 3          # the same picture, decoded smaller
    np.testing.assert_array_equal(read_input_image(photo, PreprocessConfig(size=100)), full)   # decode "full"
    grey = tmp_path / "grey.jpg"
    cv2.imwrite(str(grey), np.full((800, 1200), 128, np.uint8))
    with pytest.raises(ImageError, match="grayscale"):              # not forced to colour by the reduced path
        read_input_image(grey, cfg)
    assert PreprocessConfig.from_dict(cfg.to_dict()).decode == "reduced"
    with pytest.raises(Exception, match="unknown decode rule 'half'"):
        PreprocessConfig(decode="half")


def test_augmentation_policies_and_their_limits():
    from edgederm.augment import POLICIES, policy
    assert policy("fusionm4net") == AugmentConfig()
    light = policy("light")
    assert (light.shift_limit, light.scale_limit, light.rotate_limit, light.brightness_limit) == (0.06, 0.06, 0.0, 0.15)
    assert policy("light", rotate_limit=10.0, shift_limit=None).rotate_limit == 10.0
    assert policy("light", shift_limit=None).shift_limit == 0.06
    with pytest.raises(Exception, match="policy 'heavy' is not one of fusionm4net, light"):
        policy("heavy")
    with pytest.raises(Exception, match="unknown limit"):
        policy("light", hue_limit=0.1)
    # light moves pixels less than the default policy on average
    img = _rgb(64, 64)
    def moved(cfg):
        return np.mean([np.abs(augment_image(img, np.random.default_rng(i), cfg).astype(int) - img).mean()
                        for i in range(40)])
    assert moved(POLICIES["light"]) < moved(POLICIES["fusionm4net"])


def test_augmentation_is_repeatable_for_a_seed_and_changes_the_image():
    img = _rgb(64, 64)
    a = augment_image(img, np.random.default_rng(5), AugmentConfig())
    b = augment_image(img, np.random.default_rng(5), AugmentConfig())
    np.testing.assert_array_equal(a, b)
    assert a.shape == img.shape and a.dtype == np.uint8
    always = AugmentConfig(p_flip=1.0, p_rot90=0.0, p_shift_scale_rotate=0.0, p_brightness_contrast=0.0)
    np.testing.assert_array_equal(augment_image(img, np.random.default_rng(0), always), img[::-1, ::-1])
    assert not np.array_equal(normalize(a), normalize(img))


def test_header_size_reads_jpeg_and_png_without_decoding(tmp_path):
    from edgederm.preprocess import header_size
    write_jpeg(tmp_path / "a.jpg", _rgb(37, 53))
    cv2.imwrite(str(tmp_path / "a.png"), _rgb(41, 29))
    assert header_size((tmp_path / "a.jpg").read_bytes()) == (53, 37)
    assert header_size((tmp_path / "a.png").read_bytes()) == (29, 41)


def test_huge_image_is_refused_before_decoding(tmp_path):
    import struct
    import zlib
    # A PNG whose header claims 20000 x 20000: decoding it would need 1.2 GB.
    ihdr = struct.pack(">IIBBBBB", 20000, 20000, 8, 2, 0, 0, 0)
    chunk = lambda kind, body: struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))  # noqa: E731
    data = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    (tmp_path / "huge.png").write_bytes(data)
    with pytest.raises(ImageError, match=r"huge\.png: image of 20000 x 20000 pixels is too large"):
        read_image(tmp_path / "huge.png")


def test_bytes_after_the_jpeg_end_are_accepted(tmp_path):
    # Phones append a video after the JPEG ("motion photos"); its bytes may hold any marker.
    data = write_jpeg(tmp_path / "a.jpg", _rgb(64, 64)).read_bytes()
    (tmp_path / "motion.jpg").write_bytes(data + b"ftypmp4\xff\xda\x00\x08\x01\x02" * 10)
    np.testing.assert_array_equal(read_image(tmp_path / "motion.jpg"), read_image(tmp_path / "a.jpg"))


@pytest.mark.parametrize("shape", [(2, 2), (63, 500), (500, 40)])
def test_photo_smaller_than_the_model_input_is_refused_naming_file_and_size(tmp_path, shape):
    write_jpeg(tmp_path / "thumb.jpg", _rgb(*shape))
    with pytest.raises(ImageError, match=rf"thumb\.jpg: photo of {shape[1]} x {shape[0]} pixels is smaller than "
                                         r"the model's 64-pixel input on its short side"):
        load_input(tmp_path / "thumb.jpg", PreprocessConfig(size=64))
    assert load_input(write_jpeg(tmp_path / "ok.jpg", _rgb(64, 80)), PreprocessConfig(size=64)).shape == (3, 64, 64)
