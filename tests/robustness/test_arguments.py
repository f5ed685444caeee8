"""Numbers and settings refused where the command line parses them, before anything is loaded or written."""


import pytest

from tests.helpers import (
    assert_clean_failure,
    run_cli,
)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["sample", "--num-samples", "1000000000"], ["from 1 to 100,000", "different --seed values"]),
        (["evaluate", "--num-samples", "1000000000"], ["from 1 to 100,000", "different --seed values"]),
        (["sample", "--seed", str(2**64)], ["expected a seed from 0 to 4294967295"]),
        (["evaluate", "--seed", "-1"], ["expected a seed from 0 to 4294967295"]),
        (["train", "--seed", str(2**64)], ["expected a seed from 0 to 4294967295"]),
        (["train", "--lr", "inf"], ["--lr", "not a finite number"]),
        (["train", "--lr", "nan"], ["--lr", "not a finite number"]),
        (["train", "--lr", "1e300"], ["--lr", "at most 10", "the book's is 0.002"]),
        (["train", "--lr", "0"], ["--lr", "above 0"]),
        (["train", "--min-snr-gamma", "1e300"], ["--min-snr-gamma", "up to 1e+06"]),
        (["train", "--grad-clip", "1e300"], ["--grad-clip", "up to 1e+06"]),
        (["train", "--min-snr-gamma", "inf"], ["--min-snr-gamma", "not a finite number"]),
        (["train", "--grad-clip", "nan"], ["--grad-clip", "not a finite number"]),
        (["train", "--ema-decay", "nan"], ["--ema-decay", "not a finite number"]),
        (["sample", "--noise-scale", "nan"], ["--noise-scale", "not a finite number"]),
        (["sample", "--sampler", "ddim", "--eta", "nan"], ["--eta", "not a finite number"]),
    ],
)
def test_out_of_range_numbers_are_refused_at_parse_time(argv, words, tmp_path, capsys):
    if argv[0] in ("sample", "evaluate"):
        argv = [*argv, "--checkpoint", str(tmp_path)] + (["--out", str(tmp_path / "g.png")] if argv[0] == "sample"
                                                         else [])
    else:
        argv = [*argv, "--out", str(tmp_path / "run")]
    code, output = run_cli(argv, capsys)
    assert_clean_failure(code, output, 2, *words)
    assert not (tmp_path / "run").exists()
