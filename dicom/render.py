"""Pictures of DICOM objects for people: one image frame, and a 12-lead ECG on calibrated paper.

``render_frame`` follows the grayscale pipeline of PS3.4 N.2: Modality LUT (rescale slope and
intercept, per frame for enhanced objects), VOI (the caller's window, else the file's, else the
frame's minimum to maximum), MONOCHROME1 inverted; colour frames come out as RGB. Any transfer
syntax pydicom can decode with the installed plugins works (JPEG, JPEG-LS, JPEG 2000, RLE).

``render_ecg`` draws the RHYTHM multiplex group the way an electrocardiograph prints it: 25 mm/s,
10 mm/mV, a 1 mm / 5 mm grid, leads in the 3x4 layout (2.5 s each) with a 10 s lead II rhythm
strip below, and a 1 mV calibration pulse at the start of every row. Sizes are in millimetres
and become pixels at the requested dpi, so a printout at that dpi measures true.
"""

from __future__ import annotations

import io
import logging
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_color_lut, apply_modality_lut, convert_color_space, get_decoder

log = logging.getLogger(__name__)

PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
FORMATS = {"png": "PNG", "jpeg": "JPEG", "jpg": "JPEG"}

MM_PER_INCH = 25.4
PAPER_SPEED_MM_PER_S = 25.0
GAIN_MM_PER_MV = 10.0
MARGIN_MM = 5.0  # left, right and bottom, outside the grid
HEADER_MM = 10.0  # above the grid: paper speed, gain, sampling rate
CALIBRATION_MM = 10.0  # at the start of each row: 2.5 mm baseline, 5 mm (200 ms) pulse, 2.5 mm
ROW_MM = 35.0
BASELINE_MM = 21.0  # from the top of a row to its baseline
COLUMN_S = 2.5
STRIP_S = 10.0
LAYOUT = (("I", "aVR", "V1", "V4"), ("II", "aVL", "V2", "V5"), ("III", "aVF", "V3", "V6"))
RHYTHM_LEAD = "II"
PAPER, MINOR_LINE, MAJOR_LINE, INK = (255, 255, 255), (255, 204, 204), (230, 110, 110), (0, 0, 0)
#: SCP-ECG (5.6.3-9-n) and MDC (2:n) lead codes share the lead numbers.
LEAD_NUMBERS = {1: "I", 2: "II", 61: "III", 62: "aVR", 63: "aVL", 64: "aVF"} | {
    n: f"V{n - 2}" for n in range(3, 9)
}
LEAD_MEANING = re.compile(r"\b(aVR|aVL|aVF|V[1-6]|III|II|I)\b", re.IGNORECASE)
MV_PER_UNIT = {"uV": 1e-3, "mV": 1.0, "V": 1e3, "nV": 1e-6}


def render_frame(
    ds: Dataset,
    frame: int = 0,
    *,
    fmt: str = "png",
    window: tuple[float, float] | None = None,
    size: tuple[int, int] | None = None,
    quality: int = 90,
) -> bytes:
    """One frame (0-based) as PNG or JPEG; ``window`` is (center, width) in modality units,
    ``size`` a (width, height) viewport the image is scaled to fit, keeping its aspect."""
    _pil_format(fmt)
    if window is not None and window[1] <= 0:
        raise ValueError(f"window width must be positive, not {window[1]}")
    pixels, photometric = _decode_frame(ds, frame)
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(pixels, ds)[..., :3]
        image = Image.fromarray(_to_8_bits(rgb, 16 if rgb.dtype == np.uint16 else 8), "RGB")
    elif pixels.ndim == 3:
        if photometric.startswith("YBR"):
            pixels = convert_color_space(pixels, photometric, "RGB")
        image = Image.fromarray(_to_8_bits(pixels, int(ds.BitsStored)), "RGB")
    else:
        gray = _voi(_modality(pixels, ds, frame), ds, frame, window)
        if photometric == "MONOCHROME1":
            gray = 255 - gray
        image = Image.fromarray(gray, "L")
    if size is not None:
        image = _fit(image, size)
    return _encode(image, fmt, quality)


def _decode_frame(ds: Dataset, frame: int) -> tuple[np.ndarray, str]:
    if not any(keyword in ds for keyword in PIXEL_DATA_KEYWORDS):
        raise ValueError("the dataset has no Pixel Data (7FE0,0010): there is no image to render")
    frames = int(ds.get("NumberOfFrames") or 1)
    if not 0 <= frame < frames:
        raise ValueError(f"frame {frame} is out of range: the dataset has {frames} frame(s)")
    syntax = ds.get("file_meta", Dataset()).get("TransferSyntaxUID")
    if syntax is None:
        raise ValueError("the dataset has no Transfer Syntax UID (0002,0010) in its file meta")
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError:
        raise ValueError(f"pixel data in {syntax.name} cannot be decoded here") from None
    pixels, meta = decoder.as_array(ds, index=frame)
    return pixels, str(meta.get("photometric_interpretation", ds.PhotometricInterpretation))


def _modality(pixels: np.ndarray, ds: Dataset, frame: int) -> np.ndarray:
    """Stored values to modality values (HU for CT)."""
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    macro = "PixelValueTransformationSequence"
    slope = _number(_frame_value(ds, frame, macro, "RescaleSlope"))
    intercept = _number(_frame_value(ds, frame, macro, "RescaleIntercept"))
    values = pixels.astype(np.float64)
    return values * (1.0 if slope is None else slope) + (intercept or 0.0)


def _voi(
    values: np.ndarray, ds: Dataset, frame: int, window: tuple[float, float] | None
) -> np.ndarray:
    """Modality values to 8-bit display values (PS3.3 C.11.2.1.2)."""
    function = "LINEAR"
    if window is None:
        center = _number(_frame_value(ds, frame, "FrameVOILUTSequence", "WindowCenter"))
        width = _number(_frame_value(ds, frame, "FrameVOILUTSequence", "WindowWidth"))
        if center is not None and width is not None and width > 0:
            window = (center, width)
            function = str(ds.get("VOILUTFunction") or "LINEAR").upper()
        else:  # the whole range of this frame
            low, high = float(values.min()), float(values.max())
            window = (low + (high - low + 1) / 2, high - low + 1)
    center, width = window
    if function == "SIGMOID":
        y = 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    elif function == "LINEAR_EXACT":
        y = (values - center) / width + 0.5
    else:
        y = (values - (center - 0.5)) / max(width - 1.0, 1e-9) + 0.5
    return np.rint(np.clip(y, 0.0, 1.0) * 255.0).astype(np.uint8)


def _frame_value(ds: Dataset, frame: int, macro: str, keyword: str) -> object:
    """An attribute from the frame's functional groups (per-frame, then shared), else top level."""
    groups = []
    if "PerFrameFunctionalGroupsSequence" in ds and frame < len(
        ds.PerFrameFunctionalGroupsSequence
    ):
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds and ds.SharedFunctionalGroupsSequence:
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    for group in groups:
        items = group.get(macro)
        if items and keyword in items[0]:
            return items[0][keyword].value
    return ds.get(keyword)


def _number(value: object) -> float | None:
    """A DS/IS value as a float (the first of several), None when absent."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if value else None
    if value is None or value == "":
        return None
    return float(value)  # type: ignore[arg-type]


def _to_8_bits(pixels: np.ndarray, bits: int) -> np.ndarray:
    if bits <= 8:
        return pixels.astype(np.uint8)
    return (pixels.astype(np.uint32) >> (bits - 8)).astype(np.uint8)


def _fit(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    width, height = size
    if width <= 0 or height <= 0:
        raise ValueError(f"size must be a positive (width, height), not {size}")
    scale = min(width / image.width, height / image.height)
    fitted = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(fitted, Image.Resampling.LANCZOS)


def _pil_format(fmt: str) -> str:
    pil_format = FORMATS.get(fmt.lower())
    if pil_format is None:
        raise ValueError(f"format {fmt!r} is not supported: use 'png' or 'jpeg'")
    return pil_format


def _encode(image: Image.Image, fmt: str, quality: int, dpi: int | None = None) -> bytes:
    options: dict[str, object] = {"dpi": (dpi, dpi)} if dpi else {}
    if _pil_format(fmt) == "JPEG":
        options["quality"] = quality
    out = io.BytesIO()
    image.save(out, _pil_format(fmt), **options)
    return out.getvalue()


def render_ecg(ds: Dataset, *, fmt: str = "png", dpi: int = 100) -> bytes:
    """A 12-lead tracing at 25 mm/s and 10 mm/mV: 3x4 leads, a lead II rhythm strip."""
    _pil_format(fmt)
    if dpi <= 0:
        raise ValueError(f"dpi must be positive, not {dpi}")
    leads, rate = _rhythm_leads(ds)

    def px(mm: float) -> int:
        return round(mm * dpi / MM_PER_INCH)

    strip_mm = STRIP_S * PAPER_SPEED_MM_PER_S
    grid_right = MARGIN_MM + CALIBRATION_MM + strip_mm
    grid_bottom = HEADER_MM + 4 * ROW_MM
    image = Image.new("RGB", (px(grid_right + MARGIN_MM), px(grid_bottom + MARGIN_MM)), PAPER)
    draw = ImageDraw.Draw(image)
    for colour, step in ((MINOR_LINE, 1), (MAJOR_LINE, 5)):
        for mm in range(0, round(grid_right - MARGIN_MM) + 1, step):
            x = px(MARGIN_MM + mm)
            draw.line([(x, px(HEADER_MM)), (x, px(grid_bottom))], fill=colour)
        for mm in range(0, round(grid_bottom - HEADER_MM) + 1, step):
            y = px(HEADER_MM + mm)
            draw.line([(px(MARGIN_MM), y), (px(grid_right), y)], fill=colour)

    font = ImageFont.load_default(size=max(8, px(3.5)))
    ink = max(1, px(0.3))
    caption = f"{PAPER_SPEED_MM_PER_S:g} mm/s   {GAIN_MM_PER_MV:g} mm/mV   {rate:g} Hz"
    draw.text((px(MARGIN_MM), px(3)), caption, fill=INK, font=font)
    rows = [[(lead, i * COLUMN_S, COLUMN_S) for i, lead in enumerate(row)] for row in LAYOUT]
    rows.append([(RHYTHM_LEAD, 0.0, STRIP_S)])
    for r, segments in enumerate(rows):
        baseline = HEADER_MM + r * ROW_MM + BASELINE_MM
        pulse = [(0, 0), (2.5, 0), (2.5, GAIN_MM_PER_MV), (7.5, GAIN_MM_PER_MV), (7.5, 0), (10, 0)]
        draw.line([(px(MARGIN_MM + x), px(baseline - y)) for x, y in pulse], fill=INK, width=ink)
        for lead, start, seconds in segments:
            left = MARGIN_MM + CALIBRATION_MM + start * PAPER_SPEED_MM_PER_S
            if start > 0:  # a short tick where one lead ends and the next begins
                draw.line([(px(left), px(baseline - 3)), (px(left), px(baseline + 3))], fill=INK)
            draw.text((px(left + 1), px(baseline - BASELINE_MM + 1)), lead, fill=INK, font=font)
            trace = leads.get(lead)
            if trace is None:
                continue
            samples = trace[round(start * rate) : round((start + seconds) * rate)]
            t = np.arange(len(samples)) / rate
            xs = np.rint((left + t * PAPER_SPEED_MM_PER_S) * dpi / MM_PER_INCH)
            ys = np.rint((baseline - samples * GAIN_MM_PER_MV) * dpi / MM_PER_INCH)
            if len(samples) > 1:
                draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=INK, width=ink)
    return _encode(image, fmt, 95, dpi)


def _rhythm_leads(ds: Dataset) -> tuple[dict[str, np.ndarray], float]:
    """The RHYTHM group's leads in mV (median removed), with the sampling rate in Hz."""
    groups = list(ds.get("WaveformSequence") or [])
    if not groups:
        raise ValueError("the dataset has no Waveform Sequence (5400,0100): no ECG to render")
    labels = [str(group.get("MultiplexGroupLabel", "")).upper() for group in groups]
    index = labels.index("RHYTHM") if "RHYTHM" in labels else 0
    group = groups[index]
    data = ds.waveform_array(index)
    leads: dict[str, np.ndarray] = {}
    for channel, definition in enumerate(group.ChannelDefinitionSequence):
        name = _lead_name(definition)
        if name is not None and name not in leads:
            values = data[:, channel] * _mv_per_unit(definition)
            leads[name] = values - np.median(values)
    if "I" in leads and "II" in leads:  # Einthoven and Goldberger: limb leads from I and II
        lead_i, lead_ii = leads["I"], leads["II"]
        leads.setdefault("III", lead_ii - lead_i)
        leads.setdefault("aVR", -(lead_i + lead_ii) / 2)
        leads.setdefault("aVL", lead_i - lead_ii / 2)
        leads.setdefault("aVF", lead_ii - lead_i / 2)
    if not leads:
        raise ValueError("no ECG lead could be identified in the RHYTHM waveform channels")
    return leads, float(group.SamplingFrequency)


def _lead_name(definition: Dataset) -> str | None:
    source = (definition.get("ChannelSourceSequence") or [Dataset()])[0]
    code = str(source.get("CodeValue", ""))
    number = re.fullmatch(r"(?:5\.6\.3-9-|2:)(\d+)", code)
    if number and int(number.group(1)) in LEAD_NUMBERS:
        return LEAD_NUMBERS[int(number.group(1))]
    match = LEAD_MEANING.search(str(source.get("CodeMeaning", "")))
    if match is None:
        return None
    return {lead.upper(): lead for lead in LEAD_NUMBERS.values()}[match.group(1).upper()]


def _mv_per_unit(definition: Dataset) -> float:
    units = (definition.get("ChannelSensitivityUnitsSequence") or [Dataset()])[0]
    code = str(units.get("CodeValue", "uV"))
    if code not in MV_PER_UNIT:
        log.warning("unknown ECG channel units %r, assuming uV", code)
    return MV_PER_UNIT.get(code, 1e-3)
