"""Rendering pydicom's own test files: image frames in each transfer syntax, and a 12-lead ECG."""

from __future__ import annotations

import copy
import io

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicom import render
from dicom.render import render_ecg, render_frame


def load(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    assert path, f"{name} is not in the installed pydicom wheel"
    return pydicom.dcmread(path)


def picture(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(picture(data))


def linear_window(values: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out independently of the module."""
    out = np.empty(values.shape)
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    out[values <= low] = 0
    out[values > high] = 255
    middle = (values > low) & (values <= high)
    out[middle] = ((values[middle] - (center - 0.5)) / (width - 1) + 0.5) * 255
    return out


def test_ct_min_max_when_the_file_has_no_window():
    ds = load("CT_small.dcm")
    assert "WindowCenter" not in ds
    image = picture(render_frame(ds))
    assert (image.format, image.mode, image.size) == ("PNG", "L", (128, 128))
    gray = np.asarray(image)
    assert (gray.min(), gray.max()) == (0, 255)


def test_a_narrow_window_saturates_around_its_center():
    ds = load("CT_small.dcm")
    hounsfield = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    center = float(np.median(hounsfield))
    gray = pixels(render_frame(ds, window=(center, 2)))
    assert set(np.unique(gray)) == {0, 255}
    assert np.array_equal(gray, np.where(hounsfield >= center, 255, 0))


def test_the_files_window_and_the_argument():
    ds = load("MR_small.dcm")
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600, 1600)
    gray = pixels(render_frame(ds)).astype(int)
    assert np.abs(gray - linear_window(ds.pixel_array.astype(float), 600, 1600)).max() <= 1
    wide = pixels(render_frame(ds, window=(600, 4000))).astype(int)
    assert np.abs(wide - linear_window(ds.pixel_array.astype(float), 600, 4000)).max() <= 1
    assert wide.std() < gray.std()  # a wider window, less contrast


def test_monochrome1_is_inverted():
    ds = load("MR_small.dcm")
    normal = pixels(render_frame(ds)).astype(int)
    ds.PhotometricInterpretation = "MONOCHROME1"
    assert np.array_equal(pixels(render_frame(ds)), 255 - normal)


@pytest.mark.parametrize(
    "name",
    ["MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm", "MR_small_RLE.dcm"],
)
def test_lossless_compressed_files_render_like_the_native_one(name):
    expected = pixels(render_frame(load("MR_small.dcm")))
    ds = load(name)
    assert ds.file_meta.TransferSyntaxUID.is_compressed
    assert np.array_equal(pixels(render_frame(ds)), expected)


def test_jpeg_baseline_ybr_comes_out_rgb():
    ds = load("SC_rgb_jpeg_dcmtk.dcm")
    assert ds.PhotometricInterpretation == "YBR_FULL"
    image = picture(render_frame(ds))
    assert (image.mode, image.size) == ("RGB", (100, 100))
    red = np.asarray(image)[0, 0].astype(int)  # colour bars: red at the top left
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    assert np.abs(np.asarray(image).astype(int) - ds.pixel_array.astype(int)).max() <= 1


def test_second_frame_of_a_multi_frame_rle_file():
    ds = load("SC_rgb_rle_2frame.dcm")
    first, second = pixels(render_frame(ds, 0)), pixels(render_frame(ds, 1))
    assert second.shape == (100, 100, 3)
    assert np.array_equal(second, ds.pixel_array[1])
    assert not np.array_equal(first, second)


def test_palette_colour():
    image = picture(render_frame(load("examples_palette.dcm")))
    assert (image.mode, image.size) == ("RGB", (800, 350))
    assert len(np.unique(np.asarray(image).reshape(-1, 3), axis=0)) > 16


def test_jpeg_output_and_viewport_keeping_aspect():
    ds = load("CT_small.dcm")
    image = picture(render_frame(ds, fmt="jpeg", size=(64, 32), quality=70))
    assert (image.format, image.size) == ("JPEG", (32, 32))
    assert picture(render_frame(load("SC_rgb_jpeg_dcmtk.dcm"), size=(300, 200))).size == (200, 200)
    tall = load("JPGExtended.dcm")  # 256 columns x 1024 rows
    assert picture(render_frame(tall, size=(100, 100))).size == (25, 100)


def test_refusals_name_the_reason():
    with pytest.raises(ValueError, match="no Pixel Data"):
        render_frame(load("waveform_ecg.dcm"))
    ds = load("SC_rgb_rle_2frame.dcm")
    for frame in (2, -1):
        with pytest.raises(ValueError, match="out of range"):
            render_frame(ds, frame)
    with pytest.raises(ValueError, match="not supported"):
        render_frame(load("CT_small.dcm"), fmt="gif")
    with pytest.raises(ValueError, match="window width"):
        render_frame(load("CT_small.dcm"), window=(40, 0))


def mm_to_px(mm: float, dpi: int) -> float:
    return mm * dpi / 25.4


def ink(image: Image.Image) -> np.ndarray:
    """True where the tracing ink is (the grid is pink or red, never this dark)."""
    return np.asarray(image.convert("RGB")).max(axis=2) < 100


@pytest.mark.parametrize("dpi", [100, 200])
def test_ecg_paper_is_to_scale(dpi):
    image = picture(render_ecg(load("waveform_ecg.dcm"), dpi=dpi))
    assert (image.format, image.mode) == ("PNG", "RGB")
    assert image.info["dpi"] == pytest.approx((dpi, dpi), abs=0.01)
    strip_mm = 10 * 25  # 10 s at 25 mm/s
    width_mm = 2 * render.MARGIN_MM + render.CALIBRATION_MM + strip_mm
    height_mm = render.HEADER_MM + 4 * render.ROW_MM + render.MARGIN_MM
    assert image.width == round(mm_to_px(width_mm, dpi))
    assert image.height == round(mm_to_px(height_mm, dpi))

    dark = ink(image)
    top, bottom = (round(mm_to_px(render.HEADER_MM + r * render.ROW_MM, dpi)) for r in (3, 4))
    strip_start = round(mm_to_px(render.MARGIN_MM + render.CALIBRATION_MM, dpi))
    columns = np.flatnonzero(dark[top:bottom, strip_start:].any(axis=0))
    assert columns[-1] - columns[0] == pytest.approx(mm_to_px(strip_mm, dpi), abs=2)


@pytest.mark.parametrize("dpi", [100, 300])
def test_ecg_calibration_pulse_is_1_mv_10_mm_high(dpi):
    dark = ink(picture(render_ecg(load("waveform_ecg.dcm"), dpi=dpi)))
    left = round(mm_to_px(render.MARGIN_MM, dpi))
    right = round(mm_to_px(render.MARGIN_MM + render.CALIBRATION_MM, dpi))
    for row in range(4):
        top = round(mm_to_px(render.HEADER_MM + row * render.ROW_MM, dpi))
        bottom = round(mm_to_px(render.HEADER_MM + (row + 1) * render.ROW_MM, dpi))
        rows = np.flatnonzero(dark[top:bottom, left:right].any(axis=1))
        line = max(1, round(mm_to_px(0.3, dpi)))  # the pen's width adds to the drawn extent
        assert rows[-1] - rows[0] + 1 - line == pytest.approx(mm_to_px(10, dpi), abs=1.5)


def test_ecg_grid_lines_every_millimetre():
    image = np.asarray(picture(render_ecg(load("waveform_ecg.dcm"), dpi=254)))  # 10 px per mm
    y = round(mm_to_px(render.HEADER_MM + render.ROW_MM - 2.5, 254))  # between two traces
    x0 = round(mm_to_px(render.MARGIN_MM + 100, 254))
    line = [tuple(image[y, x]) for x in range(x0, x0 + 50)]
    assert line.count(render.MAJOR_LINE) == 1 and line.count(render.MINOR_LINE) == 4


def test_ecg_jpeg_and_refusals():
    assert picture(render_ecg(load("waveform_ecg.dcm"), fmt="jpeg")).format == "JPEG"
    with pytest.raises(ValueError, match="no Waveform Sequence"):
        render_ecg(load("CT_small.dcm"))


def test_missing_limb_leads_are_derived_from_i_and_ii():
    ds = load("waveform_ecg.dcm")
    recorded, _ = render._rhythm_leads(ds)
    eight_leads = copy.deepcopy(ds)
    for channel in eight_leads.WaveformSequence[0].ChannelDefinitionSequence[2:6]:
        source = channel.ChannelSourceSequence[0]
        source.CodeValue, source.CodeMeaning = "99", "unlabelled"
    derived, rate = render._rhythm_leads(eight_leads)
    assert rate == 1000
    assert set(derived) == set(recorded)
    for lead in ("III", "aVR", "aVL", "aVF"):  # the cart derived them too: equal to a few uV
        assert np.abs(derived[lead] - recorded[lead]).max() < 0.02
