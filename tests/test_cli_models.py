"""``--model``, ``--duration`` and ``--audio`` as a user meets them: names from the models
table (a models file may add some), and every bad value one line naming the option (exit 2)."""

from __future__ import annotations

import io
import json
import wave
from pathlib import Path

import pytest

from kf2v_tasks._cli.argtypes import model_option_problem
from kf2v_tasks._cli.inputs import defaults_from_args
from kf2v_tasks._cli.main import main
from kf2v_tasks._cli.parser import build_parser
from kf2v_tasks.dashscope.catalog import MODELS_FILE_ENV, reset_catalog

from helpers import make_frame

GEN = ["generate", "--first", "a.png", "--last", "b.png", "--output", "c.mp4"]
BUILTIN = "wan2.2-kf2v-flash, wanx2.1-kf2v-plus, wan2.1-kf2v-plus, wan2.7-i2v"


@pytest.fixture(autouse=True)
def _builtin_table(monkeypatch):
    monkeypatch.delenv(MODELS_FILE_ENV, raising=False)
    reset_catalog()
    yield
    reset_catalog()


def wav(path: Path, seconds: float) -> str:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        w.writeframes(b"\x00\x00" * int(8000 * seconds))
    path.write_bytes(buf.getvalue())
    return str(path)


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["validate", "m.csv", "--model", "wan9"],
         f"kf2v validate: error: argument --model: 'wan9' is not a known model (one of: "
         f"{BUILTIN}; a models file may add others)"),
        (["run", "m.csv", "--output", "o", "--duration", "8"],
         "kf2v run: error: argument --duration: 8 s is not available for wan2.2-kf2v-flash "
         "(its videos are always 5 s long)"),
        (["storyboard", "a.png", "b.png", "--output", "f.mp4", "--model", "wan2.7-i2v",
          "--duration", "16"],
         "kf2v storyboard: error: argument --duration: 16 s is not available for wan2.7-i2v "
         "(allowed: 2..15 s)"),
        ([*GEN, "--duration", "0"], "kf2v generate: error: argument --duration: must be >= 1, got 0"),
        ([*GEN, "--duration", "5.5"],
         "kf2v generate: error: argument --duration: must be an integer in 1..3600, got '5.5'"),
        ([*GEN, "--audio", "voice.wav"],
         "kf2v generate: error: argument --audio: wan2.2-kf2v-flash takes no driving audio; "
         "add --model wan2.7-i2v"),
        ([*GEN, "--model", "wan2.7-i2v", "--audio", "no-such-voice.wav"],
         "kf2v generate: error: argument --audio: 'no-such-voice.wav': no such file"),
        ([*GEN, "--model", "wan2.7-i2v", "--audio", " "],
         "kf2v generate: error: argument --audio: is empty; give an mp3 or wav file "
         "(path or URL)"),
        (["run", "m.csv", "--output", "o", "--model", "wan2.7-i2v", "--resolution", "480P"],
         "kf2v run: error: argument --resolution: 480P is not available for wan2.7-i2v "
         "(allowed: 1080P, 720P)"),
    ],
)  # fmt: skip
def test_a_bad_model_duration_or_audio_is_one_line(argv, line, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    assert captured.err == line + "\n" and captured.out == ""


def test_wan27_and_its_dated_variants_are_models_of_every_command():
    parser = build_parser()
    args = parser.parse_args(
        [*GEN, "--model", "WAN2.7-I2V-2026-04-25", "--duration", "8", "--audio", "v.wav"]
    )
    assert (args.model, args.duration, args.audio) == ("wan2.7-i2v-2026-04-25", 8, "v.wav")
    assert model_option_problem(args.model, None, 8, None) is None
    args = parser.parse_args(["validate", "m.csv", "--model", "wan2.7-i2v", "--duration", "12"])
    defaults = defaults_from_args(args)
    assert (defaults.model, defaults.duration) == ("wan2.7-i2v", 12)
    board = parser.parse_args(["storyboard", "a", "b", "--output", "f.mp4", "--duration", "5"])
    assert defaults_from_args(board).duration == 5
    # --audio is for one video only: rows give theirs in the manifest's audio column.
    with pytest.raises(SystemExit):
        parser.parse_args(["run", "m.csv", "--output", "o", "--audio", "v.wav"])


def test_help_lists_the_built_in_models_and_the_new_options():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for command in ("run", "generate", "storyboard", "validate"):
        text = " ".join(sub.choices[command].format_help().split())
        assert "wan2.7-i2v" in text and "--duration SECONDS" in text, command
        assert ("--audio AUDIO" in text) == (command == "generate"), command


def test_a_model_a_models_file_adds_is_accepted(tmp_path, monkeypatch):
    path = tmp_path / "models.json"
    entry = {
        "name": "wan2.8-i2v",
        "protocol": "media",
        "resolutions": ["720P"],
        "duration_min": 3,
        "duration_max": 10,
        "audio": True,
        "audio_formats": ["mp3"],
    }
    path.write_text(json.dumps({"models": [entry]}))
    monkeypatch.setenv(MODELS_FILE_ENV, str(path))
    args = build_parser().parse_args(["validate", "m.csv", "--model", "wan2.8-i2v"])
    assert args.model == "wan2.8-i2v" and defaults_from_args(args).model == "wan2.8-i2v"
    assert model_option_problem("wan2.8-i2v", None, 10, None) is None
    assert model_option_problem("wan2.8-i2v", None, 11, None) == (
        "--duration",
        "11 s is not available for wan2.8-i2v (allowed: 3..10 s)",
    )


def test_an_unreadable_models_file_is_named_on_the_model_option(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "models.json"
    bad.write_text("{")
    monkeypatch.setenv(MODELS_FILE_ENV, str(bad))
    with pytest.raises(SystemExit) as exit_:
        main(["validate", "m.csv", "--model", "wan2.8-i2v"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"kf2v validate: error: argument --model: models file {bad}: not valid")
    assert err.count("\n") == 1


def test_a_bad_driving_audio_is_named_before_anything_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    a = make_frame(tmp_path / "a.png", (640, 480))
    b = make_frame(tmp_path / "b.png", (640, 480), (30, 200, 160))
    short = wav(tmp_path / "short.wav", 1.0)
    argv = ["generate", "--first", str(a), "--last", str(b), "--output", str(tmp_path / "c.mp4")]
    code = main([*argv, "--model", "wan2.7-i2v", "--audio", short])
    assert code == 2
    err = capsys.readouterr().err
    assert err == (
        "kf2v generate: error: argument --audio: audio is 1.0 s long; wan2.7-i2v takes 2..30 s\n"
    )
    assert not (tmp_path / "c.mp4").exists()
