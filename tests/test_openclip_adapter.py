"""One test per assumption tier_openclip/openclip_adapter.py makes about open_clip's behaviour.

Each test reads the installed open_clip (its functions, its source where the behaviour is a line
of main.py) and fails, naming the assumption, when an open_clip release changes it: the fix is
then a change to openclip_adapter.py alone."""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import logging
import textwrap

import pytest
import torch
from PIL import Image

from tier_openclip import openclip_adapter as adapter
from tier_openclip.models import register_model_configs


def _source(module_name: str, function: str) -> str:
    import importlib

    module = importlib.import_module(module_name)
    func = getattr(module, function)
    func = getattr(func, "__tier_openclip_wrapped__", func)  # the plugin may have wrapped it
    return textwrap.dedent(inspect.getsource(inspect.unwrap(func)))


@pytest.fixture(scope="module")
def tiny_model():
    register_model_configs()
    model, _, preprocess = adapter.create_bare_model("TIER-tiny", output_dict=True)
    return model.eval(), preprocess


def test_train_one_epoch_takes_the_parameters_the_plugin_wraps():
    import open_clip_train.train as train

    original = getattr(train.train_one_epoch, "__tier_openclip_wrapped__", train.train_one_epoch)
    assert adapter.train_one_epoch_params(original) == adapter.TRAIN_ONE_EPOCH_PARAMS
    from tier_openclip.training.plugin import wrap_train_one_epoch

    assert adapter.train_one_epoch_params(wrap_train_one_epoch(original)) == adapter.TRAIN_ONE_EPOCH_PARAMS


def test_the_check_refuses_a_train_one_epoch_with_other_parameters(monkeypatch):
    import open_clip_train.train as train

    def train_one_epoch(model, data, loss, epoch, optimizer, scaler, scheduler, args, tb_writer=None):
        pass  # as a release that dropped dist_model would have it

    monkeypatch.setattr(train, "train_one_epoch", train_one_epoch)
    with pytest.raises(adapter.OpenClipIncompatible, match="train_one_epoch takes"):
        adapter.check_open_clip_train()


def test_a_csv_train_loader_carries_num_batches_and_main_counts_steps_from_it(tmp_path):
    from open_clip_train.data import get_csv_dataset

    for i in range(5):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
    sep = adapter.TRAIN_CSV_SEPARATOR
    (tmp_path / "train.csv").write_text(f"{adapter.TRAIN_CSV_IMAGE_KEY}{sep}{adapter.TRAIN_CSV_CAPTION_KEY}\n"
                                        + "".join(f"{tmp_path}/{i}.png{sep}cap {i}\n" for i in range(5)))
    from open_clip_train.params import parse_args

    # the table's layout is what csv_dataset_flags names, and those are open_clip_train's defaults
    flags = parse_args(["--train-data", str(tmp_path / "train.csv"), *adapter.csv_dataset_flags()])
    assert (flags.dataset_type, flags.csv_img_key, flags.csv_caption_key, flags.csv_separator) == (
        "csv", adapter.TRAIN_CSV_IMAGE_KEY, adapter.TRAIN_CSV_CAPTION_KEY, sep)
    defaults = parse_args([])
    assert (defaults.csv_img_key, defaults.csv_caption_key, defaults.csv_separator) == (
        adapter.TRAIN_CSV_IMAGE_KEY, adapter.TRAIN_CSV_CAPTION_KEY, sep)
    args = argparse.Namespace(**{**vars(flags), "distributed": False, "batch_size": 2, "workers": 0, "accum_freq": 1,
                                 "epochs": 3})
    data = {"train": get_csv_dataset(args, lambda image: torch.zeros(1), is_train=True, tokenizer=lambda t: t)}
    assert adapter.train_batches(data) == 2  # 5 samples, batches of 2, drop_last
    assert adapter.total_steps(data, args) == 6
    # main.py's scheduler length is the adapter's total_steps (the --warmup warning compares with it)
    assert '(data["train"].dataloader.num_batches // args.accum_freq) * args.epochs' in _source("open_clip_train.main", "main")


def test_params_txt_is_written_one_name_colon_value_line_per_argument(tmp_path):
    tree = ast.parse(_source("open_clip_train.main", "main"))
    writes = [ast.unparse(node) for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Attribute) and node.func.attr == "write"]
    assert "f.write(f'{name}: {val}\\n')" in writes, writes
    assert f"os.path.join(args.logs, args.name, {adapter.PARAMS_TXT!r})" in ast.unparse(tree)
    values = {"batch_size": 8, "image_mean": None, "lr": 0.0005, "model": "TIER-tiny", "siglip": False,
              "train_data": "/data/train.csv", "image_std": [0.5, 0.5, 0.5]}
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "params.txt").write_text("".join(adapter.params_txt_line(k, v) + "\n" for k, v in sorted(values.items())))
    assert adapter.read_params_txt(run / "params.txt") == values
    assert adapter.params_txt_next_to(run / "checkpoints" / "epoch_1.pt") == (run / "params.txt").resolve()


def test_main_passes_the_create_args_read_from_params_txt():
    call = _source("open_clip_train.main", "main")
    for name in adapter.CREATE_ARGS:
        assert f"{name}=args.{name}" in call.replace(" ", ""), f"open_clip_train/main.py no longer passes {name}"
    # --siglip: the logit scale and bias create_args_from_params sets
    assert "model_kwargs['init_logit_scale'] = np.log(10)" in call and "model_kwargs['init_logit_bias'] = -10" in call


def test_training_checkpoints_hold_weights_under_state_dict_and_load_checkpoint_reads_them(tmp_path, tiny_model):
    model, _ = tiny_model
    source = _source("open_clip_train.main", "main")
    assert f'"{adapter.CHECKPOINT_EPOCH_KEY}": completed_epoch' in source
    assert f'"{adapter.CHECKPOINT_WEIGHTS_KEY}": original_model.state_dict()' in source
    saved = {"epoch": 2, "name": "run", "state_dict": model.state_dict(), "optimizer": {}}
    torch.save(saved, tmp_path / "epoch_2.pt")
    from open_clip.factory import load_state_dict

    loaded = load_state_dict(str(tmp_path / "epoch_2.pt"))
    assert loaded.keys() == adapter.checkpoint_weights(saved).keys() == model.state_dict().keys()
    assert adapter.checkpoint_epoch(saved) == 2 and adapter.checkpoint_epoch(model.state_dict()) is None
    # --resume: a checkpoint with an "epoch" is a training checkpoint, anything else bare weights
    assert "if 'epoch' in checkpoint:" in source and 'sd = checkpoint["state_dict"]' in source
    assert adapter.resume_weights(saved) is saved["state_dict"]
    assert adapter.resume_weights(saved["state_dict"]) is saved["state_dict"]


def test_open_clip_appends_its_evaluation_to_checkpoints_results_jsonl(tmp_path):
    source = _source("open_clip_train.train", "evaluate")
    assert f'open(os.path.join(args.checkpoint_path, "{adapter.RESULTS_JSONL}"), "a+")' in source
    args = argparse.Namespace(save_logs=True, checkpoint_path=str(tmp_path))
    assert adapter.results_jsonl_path(args) == str(tmp_path / "results.jsonl")
    assert adapter.results_jsonl_path(argparse.Namespace(save_logs=False, checkpoint_path=str(tmp_path))) is None
    from tier_openclip.evaluation.validation_log import append_results

    append_results({"epoch": 1, "auc": 0.5}, args)
    assert json.loads((tmp_path / "results.jsonl").read_text()) == {"epoch": 1, "auc": 0.5}


def test_create_model_warns_of_random_weights_and_create_bare_model_does_not(caplog):
    register_model_configs()
    with caplog.at_level(logging.WARNING):
        adapter.symbol("create_model_and_transforms")("TIER-tiny", load_weights=False)
    assert adapter.NO_WEIGHTS_MESSAGE in caplog.text  # else the filter in create_bare_model is dead code
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        adapter.create_bare_model("TIER-tiny")
    assert adapter.NO_WEIGHTS_MESSAGE not in caplog.text
    assert not any(isinstance(f, adapter._DropNoWeightsMessage) for f in logging.getLogger().filters)


def test_the_vit_forward_is_embeds_transformer_pool_as_vit_patch_tokens_reads_it(tiny_model):
    model, _ = tiny_model
    visual = adapter.check_tower(model.visual, "VisionTransformer")
    assert list(inspect.signature(type(visual)._embeds).parameters) == ["self", "x"]
    assert list(inspect.signature(type(visual)._pool).parameters) == ["self", "x"]
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        pooled, tokens = adapter.vit_patch_tokens(visual, images)
        expected = visual(images)
    assert tokens.shape == (2, (64 // 8) ** 2, 64)
    if not visual.final_ln_after_pool:
        torch.testing.assert_close(pooled @ visual.proj, expected)


def test_the_text_transformer_embeds_return_tokens_and_mask():
    register_model_configs()
    tower_cls = adapter.symbol("TextTransformer")
    assert list(inspect.signature(tower_cls._embeds).parameters) == ["self", "text"]
    tower = tower_cls(context_length=16, vocab_size=100, width=32, heads=2, layers=1, output_dim=16)
    x, attn_mask = adapter.text_transformer_embeds(adapter.check_tower(tower, "TextTransformer"),
                                                   torch.ones(2, 16, dtype=torch.long))
    assert x.shape == (2, 16, 32) and attn_mask.shape == (16, 16)


def test_built_towers_have_the_attributes_features_reads(tiny_model):
    model, _ = tiny_model
    adapter.check_tower(model.visual, "VisionTransformer")
    adapter.check_tower(model, "CLIP")
    with pytest.raises(adapter.OpenClipIncompatible, match="ModifiedResNet lacks layer1"):
        adapter.check_tower(torch.nn.Module(), "ModifiedResNet")


def test_clip_bpe_ends_words_with_the_marker_word_groups_reads():
    tokenizer = adapter.symbol("get_tokenizer")("ViT-B-32")
    ids = [i for i in tokenizer(["left pleural effusion"])[0].tolist() if i][1:-1]  # without start/end
    assert [tokenizer.decoder[i] for i in ids] == ["left</w>", "ple", "ural</w>", "ef", "fusion</w>"]
    assert adapter.word_groups(tokenizer, ids) == [("left", [0]), ("pleural", [1, 2]), ("effusion", [3, 4])]


@pytest.mark.parametrize("pieces, words", [
    (["left", "pl", "##eural", "e", "##ff", "##usion"], ["left", "pleural", "effusion"]),  # WordPiece
    (["▁left", "▁ple", "ural", "▁effusion"], ["left", "pleural", "effusion"]),  # SentencePiece
])
def test_word_groups_of_hugging_face_tokenizers(pieces, words):
    from types import SimpleNamespace

    hf = SimpleNamespace(tokenizer=SimpleNamespace(convert_ids_to_tokens=lambda ids: [pieces[i] for i in ids]))
    assert [word for word, _ in adapter.word_groups(hf, list(range(len(pieces))))] == words


# A step line as open_clip 3.3.0 wrote it, copied from the out.log of a demo run (clip-filip-start0,
# 2026-12-05): the form parse_step_times reads.
OPEN_CLIP_3_3_STEP_LINE = ("2026-12-05,09:20:29 | INFO | Train Epoch: 0 [  32/2000 (2%)] Data (t): 0.024 Batch (t): "
                           "0.133, 240.209/s, 240.209/s/gpu LR: 0.000100 Logit Scale: 13.054 Contrastive_loss: 2.5930 "
                           "(2.5930) Loss: 2.5930 (2.5930)")


def test_train_one_epoch_logs_the_step_line_parse_step_times_reads():
    log = "\n".join(["2026-12-05,09:20:28 | INFO | Start epoch 0", OPEN_CLIP_3_3_STEP_LINE,
                     OPEN_CLIP_3_3_STEP_LINE.replace("Batch (t): 0.133", "Batch (t): 0.091")])
    assert adapter.parse_step_times(log) == [0.133, 0.091]
    assert adapter.is_train_step_line(OPEN_CLIP_3_3_STEP_LINE) and not adapter.is_train_step_line("Start epoch 0")
    # the installed open_clip still writes that form, and 'Batch (t)' is the time since the last line
    source = _source("open_clip_train.train", "train_one_epoch")
    for piece in ('f"Train Epoch: {epoch} [{num_samples:>{sample_digits}}/{samples_per_epoch} ({percent_complete:.0f}%)] "',
                  'f"Data (t): {data_time_m.avg:.3f} "', 'f"Batch (t): {batch_time_m.avg:.3f}, ', "batch_time_m.reset()"):
        assert piece in source, f"open_clip_train's train_one_epoch no longer logs {piece}"


def test_a_step_line_in_another_form_is_refused_not_skipped():
    changed = OPEN_CLIP_3_3_STEP_LINE.replace("Batch (t): 0.133,", "Step time: 0.133s,")
    with pytest.raises(adapter.OpenClipIncompatible, match="logs its training steps in a form tier-openclip does not know"):
        adapter.parse_step_times(changed)


@pytest.mark.parametrize("mode", ["shortest", "longest", "squash"])
def test_the_resize_mode_is_read_from_open_clips_own_validation_transform(mode):
    import open_clip

    preprocess = open_clip.image_transform(64, is_train=False, resize_mode=mode)
    assert adapter.transform_resize_mode(preprocess) == mode, [type(step).__name__ for step in preprocess.transforms]
    if mode == "longest":  # the class the adapter names, with the attribute it reads
        assert any(type(step).__name__ == adapter.KEEP_RATIO_TRANSFORM and step.longest for step in preprocess.transforms)
    assert adapter.transform_resize_mode(lambda image: image) == "shortest"  # not an open_clip transform


def test_open_clip_train_raises_every_logger_to_info_and_the_torch_internals_are_put_back():
    import torch._subclasses.fake_tensor  # noqa: F401 -- its atexit handler logs "FakeTensor cache stats"
    from open_clip_train.logger import setup_logging

    names = ["torch._subclasses.fake_tensor", "torch._dynamo.utils", "tier_openclip"]
    before = {name: logging.getLogger(name).level for name in [*logging.root.manager.loggerDict, "root"]}
    handlers = list(logging.root.handlers)
    try:
        setup_logging(None, logging.INFO)
        assert all(logging.getLogger(name).level == logging.INFO for name in names)  # open_clip's doing
        quieted = adapter.quiet_torch_internals()
        assert {"torch._subclasses.fake_tensor", "torch._dynamo.utils"} <= set(quieted)
        assert not logging.getLogger("torch._subclasses.fake_tensor").isEnabledFor(logging.INFO)
        assert logging.getLogger("tier_openclip").level == logging.INFO  # ours and open_clip's stay
        setup_logging(None, logging.DEBUG)  # --debug: everything stays as asked
        assert adapter.quiet_torch_internals() == []
    finally:
        logging.root.handlers[:] = handlers
        for name, level in before.items():
            (logging.root if name == "root" else logging.getLogger(name)).setLevel(level)


def test_the_start_up_hook_patches_only_what_the_adapter_names():
    """_startup.py may import nothing of tier_openclip, so it patches parse_args itself: what it
    patches must still be what PATCHED names (an open_clip upgrade then shows here)."""
    from helpers import startup_hook_source

    source = startup_hook_source()
    tree = ast.parse(source.read_text(encoding="utf-8"))
    assigned = {ast.unparse(node.targets[0]) for node in ast.walk(tree)
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Attribute)}
    assert assigned == {"params.parse_args", "parse_args.__wrapped__", "loader.exec_module"}, assigned
    imported = {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant)
                and isinstance(node.value, str) and node.value.startswith("open_clip_train.") and " " not in node.value}
    assert imported == {"open_clip_train.params"} and "parse_args" in adapter.PATCHED["open_clip_train.params"]
