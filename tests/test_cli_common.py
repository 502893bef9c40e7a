"""What the commands share on the command line (tier_openclip/cli_common.py): the one list-flag form
and the flags every eval command runs with."""

from __future__ import annotations

import argparse

import pytest

from tier_openclip.errors import UsageError, add_list_flag, listed


def _parser(**kwargs) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="t")
    add_list_flag(parser, "--views", "VALUE", "views", **kwargs)
    return parser


def test_a_list_flag_takes_words_and_repeating_it_adds_more():
    args = _parser().parse_args(["--views", "PA", "AP", "--views", "LL"])
    assert args.views == ["PA", "AP", "LL"]
    assert _parser().parse_args([]).views is None  # unset: the command's default comes from listed()


def test_listed_keeps_the_order_drops_repeats_and_falls_back_to_the_default():
    assert listed("--views", ["AP", "PA", "AP"], ("PA",)) == ["AP", "PA"]
    assert listed("--views", None, ("PA", "AP")) == ["PA", "AP"]
    assert listed("--views", [], ("PA", "AP")) == ["PA", "AP"]


def test_listed_refuses_the_comma_form_and_shows_the_words_form():
    with pytest.raises(UsageError) as error:
        listed("--losses", ["clip,tier"])
    assert str(error.value) == "--losses clip,tier: give the values as separate words (e.g. --losses clip tier)"


def test_a_words_list_flag_is_checked_by_the_parser(capsys):
    assert _parser(words=True).parse_args(["--views", " PA ", "AP"]).views == ["PA", "AP"]  # stripped
    for bad in ("PA,AP", " "):
        with pytest.raises(SystemExit) as exit_info:
            _parser(words=True).parse_args(["--views", bad])
        assert exit_info.value.code == 2
        assert "give the values as separate words (e.g. PA AP), not a comma-separated list" in capsys.readouterr().err
    # without words, a comma is a character of the value (a phrase, a file name)
    assert _parser().parse_args(["--views", "left, lower"]).views == ["left, lower"]


# --- the flags every eval command runs with -------------------------------------------------------


@pytest.mark.parametrize("task, batch_size, quiet", [("zeroshot", 64, False), ("grounding", 32, True),
                                                     ("segmentation", 32, True)])
def test_every_eval_command_has_the_run_flags_with_its_documented_defaults(task, batch_size, quiet, capsys):
    from tier_openclip.commands.cli import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["eval", task, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--bootstrap N", "--seed", "--batch-size", "--workers"):
        assert flag in text, (task, flag)
    assert "(default 1000; 0: no intervals)" in text and f"(default {batch_size})" in text
    assert ("--quiet" in text) == quiet
    required = {"zeroshot": ["--dataset", "chexpert"], "grounding": [], "segmentation": []}[task]
    args = build_parser().parse_args(["eval", task, "--model", "m", "--data", "d", *required])
    assert (args.bootstrap, args.seed, args.batch_size, args.workers) == (1000, 0, batch_size, 2)


@pytest.mark.parametrize("task", ["zeroshot", "grounding", "segmentation"])
@pytest.mark.parametrize("flag, value, message", [("--bootstrap", "-1", "--bootstrap -1: must be >= 0"),
                                                  ("--batch-size", "0", "--batch-size 0: must be >= 1"),
                                                  ("--workers", "-2", "--workers -2: must be >= 0")])
def test_run_flags_out_of_range_are_refused_before_anything_is_read(task, flag, value, message, tmp_path, capsys):
    from tier_openclip.commands import cli

    required = ["--dataset", "chexpert"] if task == "zeroshot" else []
    missing = str(tmp_path / "no-such-set")  # refused on the flag, before --data is looked at
    assert cli.main(["eval", task, "--model", "m", "--data", missing, *required, flag, value]) == 2
    assert capsys.readouterr().err == f"tier-openclip eval {task}: {message}\n"


@pytest.mark.parametrize("task, set_file, header", [("grounding", "boxes.csv", "image,finding,phrase,x0,y0,x1,y1"),
                                                    ("segmentation", "splits.csv", "image,mask,split,id")])
def test_cli_errors_are_one_line_with_the_right_status(task, set_file, header, tmp_path, capsys):
    """check_evaluation_inputs, as grounding and segmentation run it: exit 2 for a --data that is no
    folder, 1 for a set that cannot be read, checked before the weights are."""
    from tier_openclip.commands.cli import main

    assert main(["eval", task, "--model", "TIER-tiny", "--data", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "meta.json").write_text("{")
    (tmp_path / set_file).write_text(header + "\n")
    weights = tmp_path / "epoch_1.pt"  # only named: the set fails first
    weights.write_bytes(b"")
    assert main(["eval", task, "--model", "TIER-tiny", "--pretrained", str(weights), "--data", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"tier-openclip eval {task}: ") and "is not JSON" in err and "Traceback" not in err
