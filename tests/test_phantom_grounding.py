"""The phantom's grounding layout (``PhantomConfig.preset(..., grounding=True)``) and the one
background every install draws on."""

from __future__ import annotations

import dataclasses
import itertools
import sys

import numpy as np
import pytest

from tier_openclip import phantom
from tier_openclip.evaluation.grounding import location_words
from tier_openclip.phantom import FINDING_NAMES, PHRASES, PhantomConfig, PlannedFinding

LUNG = ("opacity", "bulla")
GROUNDING_SITES = [site for name in FINDING_NAMES for site in phantom.sites_of(name, grounding=True)]


def grounding(**overrides) -> PhantomConfig:
    return PhantomConfig.preset("small", grounding=True, **overrides)


def planned(site, index: int) -> PlannedFinding:
    spec = phantom.FINDINGS_BY_NAME[site.name]
    severity = list(spec.severities)[index % len(spec.severities)]
    low, high = spec.severities[severity]
    return PlannedFinding(*site, severity, (low + high) / 2, sum(spec.density) / 2, seed=100 + index,
                          phrase=PHRASES[site.name].term)


def render(config, background, plan, *findings):
    return phantom.render_sample(dataclasses.replace(plan, findings=tuple(findings)), config, background)


def test_preset_sets_the_layout_below_the_overrides():
    config = grounding(seed=2, num_test=10, finding_count_probs=(0.0, 1.0, 0.0))
    assert config.grounding and (config.seed, config.num_test, config.num_train) == (2, 10, 2000)
    assert config.finding_count_probs == (0.0, 1.0, 0.0)  # an override wins over GROUNDING_DEFAULTS
    assert config.weights() == phantom.GROUNDING_DEFAULTS["finding_weights"]
    assert not PhantomConfig.preset("small").grounding  # the located layout stays the default
    with pytest.raises(ValueError, match="use_real_anatomy=None"):
        PhantomConfig(use_real_anatomy=None)


def test_captions_and_phrases_name_findings_by_their_bare_terms_only():
    """No word of a caption or a grounded phrase says where; one or two different findings per
    image, each named by its category's term in its caption."""
    config = grounding()
    counts = set()
    for i in range(400):
        plan = phantom.plan_sample(phantom.sample_rng(0, "train", i), config)
        names = [f.name for f in plan.findings]
        counts.add(len(names))
        assert len(set(names)) == len(names)
        assert location_words(plan.caption) == (), plan.caption
        for finding in plan.findings:
            assert finding.phrase == PHRASES[finding.name].term and finding.phrase in plan.caption.lower()
            assert (finding.name == "cardiomegaly") == (finding.side is None)
            # a zone only for a lung lesion beside an enlarged heart, and never said
            assert finding.zone is None or (finding.zone == "upper" and "cardiomegaly" in names), plan
        # No place-naming negation either ("The costophrenic angles are sharp.", "No left ...").
        assert "costophrenic" not in plan.caption and "Heart size" not in plan.caption
    assert counts == {1, 2}


def test_captions_name_present_findings_only_and_the_prompts_need_no_negation(tmp_path):
    """No "No {term}." sentences (they kept the text tower at chance: GROUNDING_DEFAULTS), so the
    zero-shot prompts are the captions' own sentences with no negative prompt; the located layout
    keeps CheXzero's "{term}" vs "no {term}"."""
    config = grounding()
    assert config.negation_prob == 0.0
    for i in range(200):
        plan = phantom.plan_sample(phantom.sample_rng(0, "train", i), config)
        sentences = [s.strip() for s in plan.caption.split(".") if s.strip()]
        assert len(sentences) == len(plan.findings), plan.caption
        assert not any(s.lower().startswith("no ") or " no " in s.lower() for s in sentences), plan.caption
    prompts = phantom.prompt_set(negations=False)
    assert prompts == {name: {"positive": phantom.positive_sentences(name, PHRASES[name].term), "negative": []}
                       for name in FINDING_NAMES}
    assert prompts["opacity"]["positive"] == ["Opacity.", "There is an opacity.", "Opacity is seen."]
    assert prompts["cardiomegaly"]["positive"] == ["Cardiomegaly.", "There is cardiomegaly.", "Cardiomegaly is seen."]
    summary = phantom.write_phantom_dataset(tmp_path, grounding(num_train=2, num_test=2), progress=False, workers=1)
    assert summary["prompts"] == prompts
    from tier_openclip.evaluation.prompts import load_prompt_file

    assert load_prompt_file(tmp_path / "test_eval" / "prompts.json") == prompts
    located = phantom.write_phantom_dataset(tmp_path / "located", PhantomConfig.preset("small", num_train=2, num_test=2),
                                            progress=False, workers=1)
    assert located["prompts"] == phantom.prompt_set() and located["prompts"]["bulla"]["negative"] == ["no bulla"]


def test_sites_are_compatible_and_pairs_do_not_overlap():
    """Sampled sites are pairwise compatible, every grounding site occurs, and for every
    compatible pair each finding's drawing stays out of the other's box (so each phrase's
    competitor region is a different place)."""
    config = grounding()
    seen = set()
    for i in range(2000):
        sites = phantom.sample_sites(phantom.sample_rng(0, "train", i), config)
        assert all(phantom.compatible(a, b) for a, b in itertools.combinations(sites, 2))
        seen |= set(sites)
    assert seen == set(GROUNDING_SITES) and len(GROUNDING_SITES) == 4 + 4 + 2 + 1 + 2  # lesions: lung or upper zone
    background = phantom.build_background(config)
    plan = phantom.plan_sample(phantom.sample_rng(3, "train", 0), config)
    empty = render(config, background, plan).image.astype(int)
    pairs = [(a, b) for a, b in itertools.combinations(GROUNDING_SITES, 2) if phantom.compatible(a, b)]
    for i, (a, b) in enumerate(pairs * 3):
        alone = {s: render(config, background, plan, planned(s, i)) for s in (a, b)}
        for s, other in ((a, b), (b, a)):
            diff = np.abs(alone[s].image.astype(int) - empty)
            ox0, oy0, ox1, oy1 = alone[other].boxes[other.name]
            assert diff[oy0:oy1, ox0:ox1].sum() <= 0.1 * diff.sum(), (s, other)
    assert not phantom.compatible(phantom.Site("opacity", "left"), phantom.Site("cardiomegaly"))
    assert not phantom.compatible(phantom.Site("bulla", "right"), phantom.Site("opacity", "right"))


def test_a_lung_lesion_may_join_every_category_and_moves_up_only_beside_an_enlarged_heart():
    """Placements: a lung lesion shares an image with every other category, anywhere in its lung
    except beside an enlarged heart (its upper zone there); an effusion never meets an enlarged
    heart (the heart's box spans both bases)."""
    order = lambda *names: tuple(sorted(names, key=FINDING_NAMES.index))  # noqa: E731
    for lesion in LUNG:
        assert {sites for sites in phantom.grounding_placements((lesion,))} == {
            (phantom.Site(lesion, side),) for side in phantom.SIDES}
        for other in FINDING_NAMES:
            if other == lesion:
                continue
            placements = phantom.grounding_placements(order(lesion, other))
            zones = {s.zone for sites in placements for s in sites if s.name == lesion}
            sides = {s.side for sites in placements for s in sites if s.name == lesion}
            assert zones == ({"upper"} if other == "cardiomegaly" else {None}), (lesion, other, placements)
            assert sides == set(phantom.SIDES), (lesion, other)
    assert phantom.grounding_placements(("pleural effusion", "cardiomegaly")) == ()


def test_a_lung_lesions_absence_does_not_tell_of_an_enlarged_heart():
    """The label table: most images with an enlarged heart hold a lung lesion too (when the two
    never met, every such image was lesion-free and "no lung lesion" predicted cardiomegaly), and
    a pair is as common whichever of its categories is drawn first (cardiomegaly with opacity as
    with bulla, which share a weight)."""
    labels = phantom.split_labels(grounding(num_train=3000), "train")
    column = {name: labels[:, i].astype(bool) for i, name in enumerate(FINDING_NAMES)}
    lesion = column["opacity"] | column["bulla"]
    heart = column["cardiomegaly"]
    assert heart.sum() >= 150
    assert lesion[heart].mean() >= 0.6, lesion[heart].mean()
    with_opacity, with_bulla = (heart & column["opacity"]).sum(), (heart & column["bulla"]).sum()
    assert abs(with_opacity - with_bulla) <= 0.25 * max(with_opacity, with_bulla), (with_opacity, with_bulla)
    assert not (heart & column["pleural effusion"]).any()


def test_lung_lesions_sit_anywhere_in_either_lung():
    """A lesion's centre is drawn from its whole lung: top to bottom, on its side."""
    config = grounding()
    background = phantom.build_background(config)
    lung = background.anatomy
    for name, side in itertools.product(LUNG, phantom.SIDES):
        x0, y0, x1, y1 = (c * 64 for c in lung.lung_box(side))
        ys, xs = [], []
        for i in range(40):
            plan = phantom.plan_sample(phantom.sample_rng(5, "train", i), config)
            bx0, by0, bx1, by1 = render(config, background, plan, planned(phantom.Site(name, side), i)).boxes[name]
            xs.append((bx0 + bx1) / 2)
            ys.append((by0 + by1) / 2)
        thirds = np.histogram(ys, bins=3, range=(y0, y1))[0]
        # every third of the lung's height (the left base is narrow beside the heart: fewest there)
        assert thirds.min() >= 2, (name, side, thirds)
        assert (max(xs) < 32) if side == "right" else (min(xs) > 32), (name, side)


def test_image_free_prior_points_low_without_cardiomegaly():
    """"Point where the finding usually is", train boxes onto test boxes, at TIER-tiny's 8x8 grid,
    cardiomegaly (always where the heart is) left out. A subsample, so the bound is loose; the
    full preset's figure is in benchmarks/results/phantom-tuning-2026-12-05/."""
    config = grounding()
    result = phantom.prior_pointing_baseline(config, 400, 200, exclude=phantom.SUMMARY_EXCLUDES)
    assert result["excluded"] == ["cardiomegaly"] and result["per_finding"]["cardiomegaly"] == 1.0
    assert result["overall"] <= 0.2, result
    assert max(result["per_finding"][name] for name in LUNG) <= 0.2, result


def _blocked_optional_imports(monkeypatch) -> None:
    """pydicom and pydicom-data unimportable, and every cached background dropped."""
    for module in ("pydicom", "pydicom.data", "pydicom_data", "data_store"):
        monkeypatch.setitem(sys.modules, module, None)
    for cached in (phantom.anatomy._background, phantom.anatomy._procedural_radiograph, phantom.real_anatomy_path):
        cached.cache_clear()


@pytest.mark.parametrize("layout", ["located", "grounding"])
def test_the_same_bytes_with_or_without_optional_packages(monkeypatch, layout):
    """The default background is the procedural chest: an install without pydicom-data (or
    pydicom) renders byte for byte what one with them renders."""
    config = PhantomConfig.preset("small", grounding=layout == "grounding")

    def rendered() -> tuple[str, list[bytes]]:
        background = phantom.build_background(config)
        samples = [phantom.make_sample(phantom.sample_rng(0, split, i), config, background)
                   for split in ("train", "test") for i in range(4)]
        return background.source, [phantom.raster.png_bytes(s.image) + s.caption.encode() for s in samples]

    with_packages = rendered()
    with monkeypatch.context() as blocked:
        _blocked_optional_imports(blocked)
        assert phantom.real_anatomy_path() is None
        without = rendered()
    assert with_packages[0] == without[0] == "procedural"
    assert with_packages[1] == without[1]
    phantom.anatomy._background.cache_clear()  # the blocked run's cache entries are dropped too
    phantom.anatomy._procedural_radiograph.cache_clear()
    phantom.real_anatomy_path.cache_clear()
