"""Image decoding and preprocessing: DICOM (with its LUTs), JPEG and 16-bit PNG to an 8-bit
grayscale square of a fixed size.

DICOM pipeline (:func:`dicom_to_uint8`):

1. ``pydicom.dcmread``; pixel data decoded by pydicom's decoder plugins, which covers every
   transfer syntax MIMIC-CXR and ordinary PACS exports use: uncompressed (implicit/explicit VR,
   little/big endian), deflated, RLE lossless (pydicom's own decoder), JPEG baseline/extended/
   lossless (pylibjpeg-libjpeg), JPEG-LS (pylibjpeg-libjpeg) and JPEG 2000 (pylibjpeg-openjpeg).
   Multi-frame files use their first frame (note ``multi_frame_first_frame``).
2. The modality LUT (rescale slope/intercept or a Modality LUT Sequence) with
   :func:`pydicom.pixels.apply_modality_lut`, then the VOI LUT or window (centre/width, any VOI
   LUT Function) or the VOI LUT Sequence (which pydicom prefers when a file has both) with
   :func:`pydicom.pixels.apply_voi_lut`, whose output range (found by passing pydicom's function
   two far-out-of-range values: the window's clamps, the LUT's first and last entries) maps to
   0..255: the image looks as the
   modality asked a viewer to show it. A file that declares no VOI LUT and no window is scaled
   min-max over the image after the modality LUT (note ``no_voi_minmax``); a declared but
   unusable window (width < 1) is treated the same (note ``voi_invalid_minmax``).
3. MONOCHROME1 (white = low values, as in computed radiography) is inverted after windowing,
   so every output has white bone and black air.
4. Rounded to 8 bits.

For integer data with fewer than 2**17 distinct possible values (every real radiograph), steps
2-4 are evaluated once per stored value between the image's minimum and maximum, giving a
lookup table that is then indexed by the pixels: exactly the same numbers as applying pydicom's
functions pixel by pixel, about six times faster on a 3.6-megapixel image.

Resizing (:func:`resize_square`) keeps the aspect ratio and uses PIL's bicubic filter, which
PIL widens by the reduction factor when shrinking (antialiasing), in one of two ways:

- ``pad`` (default, as CheXzero): the long side becomes the target size and the short side is
  padded with black, centred. Nothing of the radiograph is cut off: costophrenic angles, apices
  and lateral chest walls sit at the borders of chest films and carry findings (effusion,
  pneumothorax) the model must see. Chest films are close to square (aspect 0.8-1.25), so the
  padding costs little resolution.
- ``crop`` (as BioViL): the short side becomes the target size and the long side is centre
  cropped. All pixels carry image, at the price of the film's edges.

Images smaller than the target are upsampled with the same filter (note ``upsampled``), not
failed: they are rare, usually small secondary captures, and still correct images.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image

RESIZE_MODES = ("pad", "crop")
IMAGE_FORMATS = ("jpg", "png")
RESAMPLE = Image.Resampling.BICUBIC

# Failure reasons (a sample with one of these is not written).
IMAGE_MISSING = "image_missing"  # the file named by the CSVs does not exist
IMAGE_UNREADABLE = "image_unreadable"  # not a DICOM/image file, or its header is corrupt
PIXEL_DATA_CORRUPT = "pixel_data_corrupt"  # header fine, pixel data truncated or undecodable
NO_PIXEL_DATA = "no_pixel_data"  # a DICOM without an image (e.g. a structured report)
PHOTOMETRIC_UNSUPPORTED = "photometric_unsupported"  # e.g. PALETTE COLOR: not a radiograph
IMAGE_BLANK = "image_blank"  # a single grey level after windowing: nothing to learn from

# Notes: handled conditions, counted in the manifest; the sample is written.
NOTE_MULTI_FRAME = "multi_frame_first_frame"
NOTE_NO_VOI = "no_voi_minmax"
NOTE_INVALID_VOI = "voi_invalid_minmax"
NOTE_COLOR = "color_to_grayscale"
NOTE_UPSAMPLED = "upsampled"

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
# pydicom returns these as RGB (it converts YBR to RGB by default).
_COLOR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420")
_TABLE_MAX_ENTRIES = 1 << 17


class ImageError(Exception):
    """A sample's image cannot be turned into a correct 8-bit image; ``reason`` names why."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class GrayImage:
    """An 8-bit grayscale image and the notes (handled conditions) met on the way."""

    image: Image.Image  # mode "L"
    notes: list[str] = field(default_factory=list)


def _voi_kind(ds) -> str | None:
    """Which VOI transform pydicom's apply_voi_lut applies (it prefers a VOI LUT Sequence to a
    window when a file has both): "lut", "window" or None."""
    if len(ds.get("VOILUTSequence", None) or []) > 0:
        return "lut"
    if ds.get("WindowCenter", None) not in (None, "") and ds.get("WindowWidth", None) not in (None, ""):
        return "window"
    return None


def _voi_probes(ds, kind: str) -> np.ndarray:
    """Two inputs whose VOI outputs are the ends of its output range: for a window, values far
    outside any stored value (pydicom clamps them); for a LUT, its first and last mapped values
    (the LUT's first and last entries; pydicom's LUT indexing is 16-bit, so no farther)."""
    if kind == "window":
        return np.array([-(2.0**40), 2.0**40])
    descriptor = ds.VOILUTSequence[0].LUTDescriptor
    entries, first = int(descriptor[0]) or 65536, int(descriptor[1])
    return np.array([first, first + entries - 1], dtype=np.int64)


def display_values(values: np.ndarray, ds, notes: list[str]) -> np.ndarray:
    """Stored values -> display values in [0, 1] (white = dense), per the module docstring.

    ``values`` are stored pixel values (a whole image, or the domain of a lookup table); the
    min-max fallback scales over ``values``, so pass the image's own value range.
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    modality = np.asarray(apply_modality_lut(values, ds))
    kind = _voi_kind(ds)
    out: np.ndarray | None = None
    if kind is None:
        notes.append(NOTE_NO_VOI)
    else:
        if kind == "lut" and modality.dtype.kind == "f" and np.array_equal(modality, np.rint(modality)):
            modality = modality.astype(np.int64)  # a LUT is indexed by integers
        try:
            out = np.asarray(apply_voi_lut(modality, ds, index=0), dtype=np.float64)
            low, high = sorted(np.asarray(apply_voi_lut(_voi_probes(ds, kind), ds, index=0), dtype=np.float64))
            if not high > low:
                raise ValueError("the VOI transform has an empty output range")
        except (ValueError, TypeError, IndexError, KeyError, AttributeError):
            notes.append(NOTE_INVALID_VOI)
            out = None
    if out is None:
        out = modality.astype(np.float64)
        low, high = float(out.min()), float(out.max())
        if not high > low:
            raise ImageError(IMAGE_BLANK, "every pixel has the same value")
    scaled = np.clip((out - low) / (high - low), 0.0, 1.0)
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        scaled = 1.0 - scaled
    return scaled


def _to_uint8(unit: np.ndarray) -> np.ndarray:
    return np.rint(unit * 255.0).astype(np.uint8)


def monochrome_to_uint8(pixels: np.ndarray, ds, notes: list[str]) -> np.ndarray:
    """Apply the modality LUT, VOI LUT/window and MONOCHROME1 inversion to one frame."""
    if pixels.dtype.kind in "iu" and pixels.size:
        low, high = int(pixels.min()), int(pixels.max())
        if high - low < _TABLE_MAX_ENTRIES:
            table = _to_uint8(display_values(np.arange(low, high + 1, dtype=np.int64), ds, notes))
            if low >= 0:  # index by the pixels themselves: no offset array
                if low:
                    table = np.concatenate([np.zeros(low, dtype=np.uint8), table])
                return table[pixels]
            return table[pixels.astype(np.int64) - low]
    return _to_uint8(display_values(pixels.astype(np.float64), ds, notes))


def dicom_to_uint8(source: str | os.PathLike | BinaryIO) -> GrayImage:
    """Decode a DICOM file to an 8-bit grayscale image, windowed as the file asks.

    Raises :class:`ImageError` with a reason for everything that is not a correct radiograph.
    """
    import pydicom
    from pydicom.pixels import pixel_array

    notes: list[str] = []
    try:
        ds = pydicom.dcmread(source)
    except FileNotFoundError as error:
        raise ImageError(IMAGE_MISSING, str(error)) from None
    except Exception as error:  # pydicom raises many types for damaged headers
        raise ImageError(IMAGE_UNREADABLE, f"{type(error).__name__}: {error}") from None
    if "PixelData" not in ds:
        kind = "FloatPixelData" if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds else None
        raise ImageError(NO_PIXEL_DATA, f"{kind} is not a radiograph" if kind else "no PixelData element")
    photometric = str(ds.get("PhotometricInterpretation", "")).strip()
    if photometric not in _MONOCHROME + _COLOR:
        raise ImageError(PHOTOMETRIC_UNSUPPORTED, f"PhotometricInterpretation {photometric or '(absent)'!r}")
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    try:
        pixels = pixel_array(ds, index=0) if frames > 1 else ds.pixel_array
    except Exception as error:  # decoders raise ValueError, RuntimeError, ... on bad streams
        raise ImageError(PIXEL_DATA_CORRUPT, f"{type(error).__name__}: {error}") from None
    if frames > 1:
        notes.append(NOTE_MULTI_FRAME)
    if pixels.ndim == 3 and photometric in _COLOR:
        notes.append(NOTE_COLOR)
        rgb = pixels.astype(np.float64)
        if pixels.dtype != np.uint8:  # >8-bit colour: scale min-max first
            rgb = (rgb - rgb.min()) / max(float(rgb.max() - rgb.min()), 1e-12) * 255.0
        luma = rgb @ np.array([0.299, 0.587, 0.114])  # ITU-R BT.601, as PIL's "L" conversion
        gray = np.clip(np.rint(luma), 0, 255).astype(np.uint8)
    elif pixels.ndim == 2 and photometric in _MONOCHROME:
        gray = monochrome_to_uint8(pixels, ds, notes)
    else:
        raise ImageError(
            PHOTOMETRIC_UNSUPPORTED, f"{photometric} pixel array of shape {tuple(pixels.shape)}"
        )
    if gray.size == 0 or gray.min() == gray.max():
        raise ImageError(IMAGE_BLANK, "a single grey level after windowing")
    return GrayImage(Image.fromarray(np.ascontiguousarray(gray), mode="L"), notes)


def jpeg_to_gray(path: str | os.PathLike, min_size: int) -> GrayImage:
    """Read a JPEG (MIMIC-CXR-JPG's, already windowed to 8 bits) as 8-bit grayscale.

    ``draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale in the DCT domain when that keeps
    both sides >= ``min_size``: a 2500-pixel film decodes several times faster, and the DCT
    reduction is itself an antialiased downscale before the final bicubic resize.
    """
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("L", (min_size, min_size))
            image.load()
            notes = [NOTE_COLOR] if image.mode not in ("L", "I;16", "I", "1") else []
            gray = image.convert("L")
    except FileNotFoundError as error:
        raise ImageError(IMAGE_MISSING, str(error)) from None
    except Exception as error:  # UnidentifiedImageError, truncated file (OSError), ...
        raise ImageError(IMAGE_UNREADABLE, f"{type(error).__name__}: {error}") from None
    extrema = gray.getextrema()
    if extrema[0] == extrema[1]:
        raise ImageError(IMAGE_BLANK, "a single grey level")
    return GrayImage(gray, notes)


def png_to_gray(path: str | os.PathLike) -> GrayImage:
    """Read a PNG of any bit depth (PadChest's are 16-bit) as 8-bit grayscale.

    Images with more than 8 bits are scaled min-max over the image (PadChest ships no window);
    8-bit grayscale is kept as it is; colour is converted to luma.
    """
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                values = np.asarray(image, dtype=np.float64)
                low, high = float(values.min()), float(values.max())
                if not high > low:
                    raise ImageError(IMAGE_BLANK, "a single grey level")
                gray = Image.fromarray(_to_uint8((values - low) / (high - low)), mode="L")
                notes: list[str] = []
            else:
                notes = [] if mode in ("L", "1", "LA") else [NOTE_COLOR]
                gray = image.convert("L")
    except ImageError:
        raise
    except FileNotFoundError as error:
        raise ImageError(IMAGE_MISSING, str(error)) from None
    except Exception as error:
        raise ImageError(IMAGE_UNREADABLE, f"{type(error).__name__}: {error}") from None
    extrema = gray.getextrema()
    if extrema[0] == extrema[1]:
        raise ImageError(IMAGE_BLANK, "a single grey level")
    return GrayImage(gray, notes)


def resize_square(gray: GrayImage, size: int, mode: Literal["pad", "crop"] = "pad") -> GrayImage:
    """Aspect-preserving resize to ``size`` x ``size`` (see the module docstring for the modes)."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    image = gray.image
    width, height = image.size
    notes = list(gray.notes)
    scale = size / (max(width, height) if mode == "pad" else min(width, height))
    if scale > 1:
        notes.append(NOTE_UPSAMPLED)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if mode == "crop":  # rounding must not leave a side short of the crop
        new_size = (max(size, new_size[0]), max(size, new_size[1]))
    resized = image.resize(new_size, RESAMPLE) if new_size != image.size else image.copy()
    if mode == "pad":
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(resized, ((size - new_size[0]) // 2, (size - new_size[1]) // 2))
        return GrayImage(canvas, notes)
    left, top = (new_size[0] - size) // 2, (new_size[1] - size) // 2
    return GrayImage(resized.crop((left, top, left + size, top + size)), notes)


def encode_image(image: Image.Image, image_format: str, jpeg_quality: int = 95) -> bytes:
    """Encode an 8-bit grayscale image as JPEG (baseline, ``jpeg_quality``) or PNG. The bytes
    depend only on the pixels and the options (no timestamps or other metadata are written)."""
    buffer = io.BytesIO()
    if image_format == "jpg":
        image.save(buffer, format="JPEG", quality=jpeg_quality)
    elif image_format == "png":
        image.save(buffer, format="PNG")
    else:
        raise ValueError(f"unknown image format {image_format!r}; expected one of {', '.join(IMAGE_FORMATS)}")
    return buffer.getvalue()
