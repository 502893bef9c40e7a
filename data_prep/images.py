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

Size limit. Before any pixel is decoded, the header's Rows x Columns x frames x samples per
pixel (a PNG's or JPEG's width x height x bands) must not exceed ``max_pixels`` (default 30
megapixels, ``--max-megapixels``; the largest chest detectors, 43 x 43 cm at 100 um, give
about 18.5), else the sample fails with ``image_too_large``: a 70 KB file can declare an
image of tens of gigabytes. A deflated DICOM is inflated whole by pydicom before its header
can be read, so it is first inflated here in chunks that are thrown away, stopping once it
is larger than any image within the limit can be (8 bytes a value, plus 16 MiB of header).
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO, Literal

import numpy as np
from PIL import Image

from .limits import DEFAULT_MAX_PIXELS

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
IMAGE_TOO_LARGE = "image_too_large"  # the header declares more than max_pixels values

_HEADER_SLACK = 16 << 20  # bytes of a deflated DICOM besides its pixel data, at most
_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian

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


@dataclass(frozen=True)
class RenderOptions:
    """What every evaluation-set writer's worker needs to store one image: the output folder, the
    square side, the resize mode and the decoded-pixel limit (passed to worker processes)."""

    out: str
    image_size: int
    resize: str
    max_pixels: int = DEFAULT_MAX_PIXELS


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


def check_pixel_count(rows: int, columns: int, frames: int = 1, samples: int = 1,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> None:  # fmt: skip
    """ImageError ``image_too_large`` when the declared image has more than ``max_pixels`` values."""
    total = max(rows, 0) * max(columns, 0) * max(frames, 1) * max(samples, 1)
    if total > max_pixels:
        raise ImageError(
            IMAGE_TOO_LARGE,
            f"{rows} x {columns} pixels x {max(frames, 1)} frame(s) x {max(samples, 1)} sample(s) = {total / 1e6:g} "
            f"megapixels declared, above the limit of {max_pixels / 1e6:g} (--max-megapixels raises it)",
        )


def _dataset_offset(path: str | os.PathLike) -> int | None:
    """Where a DICOM file's dataset starts (after the preamble and the file meta group), from
    the meta group's required group-length element; None when the file does not say."""
    with open(path, "rb") as handle:
        head = handle.read(144)
    if len(head) < 144 or head[128:132] != b"DICM" or head[132:138] != b"\x02\x00\x00\x00UL":
        return None
    return 144 + int.from_bytes(head[140:144], "little")


def _check_deflated_size(path: str | os.PathLike, max_pixels: int) -> None:
    """For a deflated DICOM: ImageError ``image_too_large`` when its dataset inflates beyond
    what an image of ``max_pixels`` values can take (see the module docstring)."""
    from pydicom.filereader import read_file_meta_info

    try:
        if read_file_meta_info(path).get("TransferSyntaxUID", "") != _DEFLATED:
            return
        offset = _dataset_offset(path)
    except Exception:  # not a DICOM file meta: dcmread names the problem
        return
    if offset is None:
        return
    limit = max_pixels * 8 + _HEADER_SLACK
    inflater, inflated = zlib.decompressobj(-zlib.MAX_WBITS), 0
    with open(path, "rb") as handle:
        handle.seek(offset)
        for block in iter(lambda: handle.read(1 << 20), b""):
            try:
                while block and not inflater.eof:  # after the end, zlib keeps bytes in unconsumed_tail
                    inflated += len(inflater.decompress(block, 1 << 24))
                    if inflated > limit:
                        raise ImageError(IMAGE_TOO_LARGE, f"the deflated dataset inflates to more than {limit / 1e6:g} MB, "
                                         f"more than an image within the limit of {max_pixels / 1e6:g} megapixels needs")
                    block = inflater.unconsumed_tail
            except zlib.error:
                return  # damaged stream: dcmread names the problem
            if inflater.eof:
                return


def dicom_to_uint8(source: str | os.PathLike | BinaryIO, max_pixels: int = DEFAULT_MAX_PIXELS) -> GrayImage:
    """Decode a DICOM file to an 8-bit grayscale image, windowed as the file asks.

    Raises :class:`ImageError` with a reason for everything that is not a correct radiograph,
    including ``image_too_large`` (checked before decoding, see the module docstring).
    """
    import pydicom
    from pydicom.pixels import pixel_array

    notes: list[str] = []
    if isinstance(source, (str, os.PathLike)) and os.path.isfile(source):
        _check_deflated_size(source, max_pixels)
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
        rows, columns, samples = (int(ds.get(name, 0) or 0) for name in ("Rows", "Columns", "SamplesPerPixel"))
    except (TypeError, ValueError):
        rows = columns = samples = 0  # the decoder will fail on it: pixel_data_corrupt
    check_pixel_count(rows, columns, frames, samples, max_pixels)
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


def _check_pil_size(image: Image.Image, max_pixels: int) -> None:
    width, height = image.size
    check_pixel_count(height, width, 1, len(image.getbands()), max_pixels)


def jpeg_to_gray(path: str | os.PathLike, min_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> GrayImage:
    """Read a JPEG (MIMIC-CXR-JPG's, already windowed to 8 bits) as 8-bit grayscale.

    ``draft`` lets libjpeg decode at 1/2, 1/4 or 1/8 scale in the DCT domain when that keeps
    both sides >= ``min_size``: a 2500-pixel film decodes several times faster, and the DCT
    reduction is itself an antialiased downscale before the final bicubic resize.
    """
    try:
        with Image.open(path) as image:
            _check_pil_size(image, max_pixels)
            if image.format == "JPEG":
                image.draft("L", (min_size, min_size))
            image.load()
            notes = [NOTE_COLOR] if image.mode not in ("L", "I;16", "I", "1") else []
            gray = image.convert("L")
    except ImageError:
        raise
    except Image.DecompressionBombError as error:  # PIL's own limit, when --max-megapixels is above it
        raise ImageError(IMAGE_TOO_LARGE, str(error)) from None
    except FileNotFoundError as error:
        raise ImageError(IMAGE_MISSING, str(error)) from None
    except Exception as error:  # UnidentifiedImageError, truncated file (OSError), ...
        raise ImageError(IMAGE_UNREADABLE, f"{type(error).__name__}: {error}") from None
    extrema = gray.getextrema()
    if extrema[0] == extrema[1]:
        raise ImageError(IMAGE_BLANK, "a single grey level")
    return GrayImage(gray, notes)


def png_to_gray(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> GrayImage:
    """Read a PNG of any bit depth (PadChest's are 16-bit) as 8-bit grayscale.

    Images with more than 8 bits are scaled min-max over the image (PadChest ships no window);
    8-bit grayscale is kept as it is; colour is converted to luma.
    """
    try:
        with Image.open(path) as image:
            _check_pil_size(image, max_pixels)
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
    except Image.DecompressionBombError as error:
        raise ImageError(IMAGE_TOO_LARGE, str(error)) from None
    except FileNotFoundError as error:
        raise ImageError(IMAGE_MISSING, str(error)) from None
    except Exception as error:
        raise ImageError(IMAGE_UNREADABLE, f"{type(error).__name__}: {error}") from None
    extrema = gray.getextrema()
    if extrema[0] == extrema[1]:
        raise ImageError(IMAGE_BLANK, "a single grey level")
    return GrayImage(gray, notes)


def load_gray(path: str, min_size: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> GrayImage:
    """Decode by file type: DICOM, PNG (any bit depth) or JPEG."""
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".dcm", ".dicom"):
        return dicom_to_uint8(path, max_pixels)
    if suffix == ".png":
        return png_to_gray(path, max_pixels)
    return jpeg_to_gray(path, min_size, max_pixels)


def square_geometry(width: int, height: int, size: int, mode: str = "pad") -> tuple[tuple[int, int], tuple[int, int]]:
    """Where :func:`resize_square` puts a ``width`` x ``height`` image: resized to ``(w, h)``,
    its top-left corner at ``(ox, oy)`` of the square (negative: cropped off). A point (x, y)
    of the input lands at (x·w/width + ox, y·h/height + oy): images and the boxes drawn on them
    (MS-CXR) go through this one geometry."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {', '.join(RESIZE_MODES)}")
    scale = size / (max(width, height) if mode == "pad" else min(width, height))
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if mode == "crop":  # rounding must not leave a side short of the crop
        new_size = (max(size, new_size[0]), max(size, new_size[1]))
        return new_size, (-((new_size[0] - size) // 2), -((new_size[1] - size) // 2))
    return new_size, ((size - new_size[0]) // 2, (size - new_size[1]) // 2)


def resize_square(gray: GrayImage, size: int, mode: Literal["pad", "crop"] = "pad") -> GrayImage:
    """Aspect-preserving resize to ``size`` x ``size`` (see the module docstring for the modes)."""
    image = gray.image
    width, height = image.size
    new_size, (offset_x, offset_y) = square_geometry(width, height, size, mode)
    notes = list(gray.notes)
    if size > (max(width, height) if mode == "pad" else min(width, height)):
        notes.append(NOTE_UPSAMPLED)
    resized = image.resize(new_size, RESAMPLE) if new_size != image.size else image.copy()
    if mode == "pad":
        canvas = Image.new("L", (size, size), 0)
        canvas.paste(resized, (offset_x, offset_y))
        return GrayImage(canvas, notes)
    left, top = -offset_x, -offset_y
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
