"""Token→patch (or prompt→patch) similarity maps drawn over the radiograph.

Each panel shows, for one word of the report (or one prompt), the cosine similarity of its
embedding to every image patch, drawn over the whole radiograph: the patch grid is interpolated
bilinearly at the stored image's pixels, through open_clip's resize and centre crop, and left
blank where the model's input does not reach. A word the tokenizer splits into pieces ("pleural":
"ple", "ural") is one panel, the similarity of the mean of its pieces' embeddings (the mean of
their maps). TIER makes these maps sparse.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from tier_openclip.cli_common import add_model_flags, device_of, model_inputs, refuse_overwriting_inputs
from tier_openclip.errors import CommandError, UsageError, add_list_flag, input_file, output_file


@dataclass
class SimilarityMap:
    label: str  # the word or prompt
    values: np.ndarray  # (H, W) cosine similarity upsampled to the model's input (over_stored_image: the stored image)
    grid: np.ndarray | None = field(default=None, repr=False)  # (rows, cols): the patch grid's values


def load_image(path: str | Path):
    """An RGB PIL image from a .dcm (LUTs applied, MONOCHROME1 inverted), .png or .jpg file.

    UsageError when there is no such file, CommandError when it cannot be read as an image."""
    from PIL import Image

    path = input_file(path, "--image")
    if path.suffix.lower() in (".dcm", ".dicom"):
        from tier_openclip.data_prep.images import ImageError, dicom_to_uint8

        try:
            return dicom_to_uint8(path).image.convert("RGB")
        except ImageError as exc:
            raise CommandError(f"--image {path}: not a usable DICOM radiograph ({exc})") from None
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 -- UnidentifiedImageError, truncated files (OSError), bombs ...
        raise CommandError(f"--image {path} is not an image PIL can read (.png, .jpg, or a .dcm): "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None


def similarity_maps(loaded, image, text: str | None = None, prompts: Sequence[str] = (), tokens: Sequence[str] = (),
                    device: str = "cpu") -> tuple[np.ndarray, list[SimilarityMap]]:
    """(the model's input image as uint8 H×W×3, one map per chosen token or prompt).

    With ``text``, one map per valid token of the report (those listed in ``tokens`` if given);
    with ``prompts``, one map per prompt from its pooled embedding.
    """
    import torch

    from tier_openclip.evaluation.grounding.geometry import MapGeometry, grid_shape, upsample_maps
    from tier_openclip.features import token_features
    from tier_openclip.openclip_adapter import decode_tokens, word_groups

    pixels = loaded.preprocess(image).unsqueeze(0).to(device)
    maps: list[tuple[str, torch.Tensor]] = []
    with torch.no_grad():
        patches = token_features(loaded.model, images=pixels)["image_tokens"][0]  # (P, D)
        if text:
            ids = loaded.tokenizer([text]).to(device)
            out = token_features(loaded.model, texts=ids)
            labels = decode_tokens(loaded.tokenizer, ids[0].tolist())
            positions = [p for p in out["text_mask"][0].nonzero().flatten().tolist() if labels[p] not in SPECIAL_TOKENS]
            wanted = {t.lower() for t in tokens}
            missing = sorted(wanted - {labels[p].lower() for p in positions}
                             - {word.lower() for word, _ in word_groups(loaded.tokenizer, [ids[0, p].item() for p in positions])})
            if missing:
                raise UsageError(f"--tokens {' '.join(missing)}: not among the tokens of --text, which the tokenizer "
                                 f"splits into: {' '.join(labels[p] for p in positions)}")
            # One panel per word; --tokens names a word or one of its pieces.
            for word, pieces in word_groups(loaded.tokenizer, [ids[0, p].item() for p in positions]):
                names = {word.lower(), *(labels[positions[i]].lower() for i in pieces)}
                if not wanted or names & wanted:
                    embedding = out["text_tokens"][0, [positions[i] for i in pieces]].mean(dim=0)
                    maps.append((word, patches @ embedding))
        elif tokens:
            raise UsageError("--tokens picks tokens of --text; give --text too")
        if prompts:
            features = token_features(loaded.model, texts=loaded.tokenizer(list(prompts)).to(device))["text_features"]
            maps += [(prompt, patches @ feature) for prompt, feature in zip(prompts, features)]
    if not maps:
        raise UsageError("nothing to draw: give --text (optionally with --tokens that occur in it) or --prompt")
    height, width = pixels.shape[-2:]
    grid = grid_shape(patches.shape[0], (height, width))
    at_input = MapGeometry(grid, (height, width), (width, height))  # the model's input itself: no resize, no crop
    grids = [(label, m.reshape(grid).float().cpu().numpy()) for label, m in maps]
    upsampled = [SimilarityMap(label, upsample_maps(values, at_input), values) for label, values in grids]
    return _unnormalise(pixels[0], loaded.preprocess), upsampled


SPECIAL_TOKENS = {"<start_of_text>", "<end_of_text>", "[CLS]", "[SEP]", "[PAD]", "<pad>", "</s>", "<s>"}


def _unnormalise(pixels, preprocess) -> np.ndarray:
    """The preprocessed image back in 0–255, for display under the maps."""
    mean = std = None
    for transform in getattr(preprocess, "transforms", []):
        if hasattr(transform, "mean") and hasattr(transform, "std"):
            mean, std = np.array(transform.mean), np.array(transform.std)
    image = pixels.permute(1, 2, 0).cpu().numpy()
    if mean is not None:
        image = image * std + mean
    return (np.clip(image, 0, 1) * 255).astype(np.uint8)


# The panels are 3.2 inches at 120 dpi (384 pixels): a radiograph is drawn at most this many
# pixels on its longer side, which keeps the maps' interpolation small on a 3000-pixel DICOM.
DRAW_PIXELS = 1024


def over_stored_image(image, maps: Sequence[SimilarityMap], preprocess, input_size: tuple[int, int]
                      ) -> tuple[np.ndarray, list[SimilarityMap]]:
    """The stored image (uint8 H×W×3, its longer side at most DRAW_PIXELS) and the maps over it:
    each patch grid interpolated at its pixels through open_clip's resize and crop (grounding's
    geometry), NaN where the model's input does not reach."""
    from tier_openclip.evaluation.grounding.geometry import MapGeometry, resize_mode_of, upsample_maps

    shown = image.copy()
    shown.thumbnail((DRAW_PIXELS, DRAW_PIXELS))  # keeps the aspect ratio, so the geometry is unchanged
    framed = []
    for similarity in maps:
        geometry = MapGeometry(similarity.grid.shape, tuple(input_size), shown.size, resize_mode_of(preprocess))
        framed.append(SimilarityMap(similarity.label, upsample_maps(similarity.grid, geometry), similarity.grid))
    return np.asarray(shown.convert("RGB")), framed


def draw_heatmaps(image: np.ndarray, maps: Sequence[SimilarityMap], out_path: str | Path, title: str = "",
                  shared_scale: bool = True) -> None:
    """One panel per map: the radiograph in grey with the similarity in colour on top."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(4, len(maps))
    rows = math.ceil(len(maps) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.4 * rows), squeeze=False)
    low = min(float(np.nanmin(m.values)) for m in maps) if shared_scale else None
    high = max(float(np.nanmax(m.values)) for m in maps) if shared_scale else None
    for ax, similarity in zip(axes.flat, maps):
        ax.imshow(image.mean(axis=2), cmap="gray")
        shown = ax.imshow(similarity.values, cmap="jet", alpha=0.45, vmin=low, vmax=high)
        ax.set_title(similarity.label, fontsize=9)
        fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def heatmap(args: argparse.Namespace) -> int:
    from tier_openclip.models import check_pretrained, load_model

    # Everything the command line alone can show wrong is checked before the model loads.
    if not args.text and not args.prompt:
        raise UsageError("give --text (the report) and/or --prompt (one or more phrases)")
    if args.tokens and not args.text:
        raise UsageError("--tokens picks tokens of --text; give --text too")
    out = output_file(args.out, "--out", example="map.png")
    formats = _figure_formats()
    if out.suffix.lower().lstrip(".") not in formats:
        raise UsageError(f"--out {out}: cannot draw a figure as {out.suffix or 'a file without a suffix'}; "
                         f"name it .png (or any of .{', .'.join(sorted(formats))})")
    input_file(args.image, "--image")
    refuse_overwriting_inputs([("--out", out)], [("--image", args.image), *model_inputs(args)])
    check_pretrained(args.model, args.pretrained, weights_required=True)
    image = load_image(args.image)
    device = device_of(args)
    loaded = load_model(args.model, args.pretrained, device=device)
    try:
        pixels, maps = similarity_maps(loaded, image, args.text, args.prompt or (), args.tokens or (), device=device)
    except ValueError as exc:  # e.g. a model whose patches do not tile its input
        raise CommandError(str(exc)) from None
    shown, maps = over_stored_image(image, maps, loaded.preprocess, pixels.shape[:2])
    draw_heatmaps(shown, maps, out, title=f"{args.model} · {Path(args.pretrained or 'untrained').name}")
    print(f"wrote {out} ({len(maps)} panels)")
    return 0


def _figure_formats() -> set[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    return set(FigureCanvasAgg.get_supported_filetypes())


def add_heatmap_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "heatmap",
        help="Draw token→patch or prompt→patch similarity maps over a radiograph.",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_flags(parser)
    parser.add_argument("--image", required=True, help="Radiograph: .dcm, .png or .jpg.")
    parser.add_argument("--text", default=None, help="Report text: one panel per word.")
    add_list_flag(parser, "--tokens", "TOKEN", default=None,
                  help="Only these words of --text (a word, or a piece of one as the tokenizer splits it).")
    add_list_flag(parser, "--prompt", "PHRASE", default=None,
                  help="Phrases, each drawn from its pooled embedding (quote a phrase of several words).")
    parser.add_argument("--out", required=True, help="Output PNG.")
    parser.set_defaults(func=heatmap)
