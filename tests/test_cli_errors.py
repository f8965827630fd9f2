"""Each bad input: a named non-zero exit and exactly one `edge-model:` line on stderr, never a traceback."""
import json

import pytest

from conftest import assert_one_line_error, run_cli
from edge_runtime.core.errors import Exit


def assert_user_error(result, code: Exit, *words):
    assert_one_line_error(result, code, "edge-model", *words)


def edit_config(ckpt, **changes):
    path = ckpt / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        target = config
        *parents, leaf = key.split("__")
        for p in parents:
            target = target[p]
        target[leaf] = value
    path.write_text(json.dumps(config))


def test_missing_dataset(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run_cli("train", "--preset", "fmnist-vit-demo", "--data-dir", empty, "--epochs", "1",
                              "--out", tmp_path / "never"),
                      Exit.NOT_FOUND, "edge-model fetch fashion-mnist")
    assert not (tmp_path / "never").exists()


def test_truncated_weights(digits_copy):
    f = digits_copy / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert_user_error(run_cli("eval", "--checkpoint", digits_copy), Exit.CORRUPT, "model.safetensors")


def test_missing_weights(digits_copy):
    (digits_copy / "model.safetensors").unlink()
    assert_user_error(run_cli("eval", "--checkpoint", digits_copy), Exit.NOT_FOUND, "model.safetensors")


def test_exits_that_do_not_fit_the_depth(digits_copy):
    edit_config(digits_copy, model__exits=[1, 2, 9])
    assert_user_error(run_cli("eval", "--checkpoint", digits_copy), Exit.BAD_INPUT, "exits [1, 2, 9]", "depth 4")


def test_config_shape_mismatch(digits_copy):
    edit_config(digits_copy, model__dim=64)
    assert_user_error(run_cli("eval", "--checkpoint", digits_copy), Exit.CORRUPT, "shape")


def test_unknown_config_field(digits_copy):
    edit_config(digits_copy, model__wings=2)
    assert_user_error(run_cli("cache-exits", "--checkpoint", digits_copy), Exit.BAD_INPUT, "wings")


def test_invalid_json_config(digits_copy):
    (digits_copy / "config.json").write_text('{"format": "edge-model-checkpoint", "version": 1,')
    assert_user_error(run_cli("eval", "--checkpoint", digits_copy), Exit.CORRUPT, "not valid JSON")


def test_wrong_format_config(digits_copy):
    edit_config(digits_copy, version=99)
    assert_user_error(run_cli("eval", "--checkpoint", digits_copy), Exit.CORRUPT, "version 99")


@pytest.mark.parametrize("command", ["eval", "cache-exits"])
def test_directory_that_is_not_a_checkpoint(tmp_path, command):
    (tmp_path / "notes.txt").write_text("hello")
    assert_user_error(run_cli(command, "--checkpoint", tmp_path), Exit.NOT_FOUND, "config.json")
    assert_user_error(run_cli(command, "--checkpoint", tmp_path / "absent"), Exit.NOT_FOUND, "not a directory")


def test_unknown_preset():
    assert_user_error(run_cli("train", "--preset", "nope"), Exit.BAD_INPUT, "nope", "digits-vit-tiny")


def test_bad_train_option():
    assert_user_error(run_cli("train", "--preset", "digits-vit-tiny", "--exit-loss", "sometimes"),
                      Exit.BAD_INPUT, "sometimes")


def test_fetch_other_dataset():
    assert_user_error(run_cli("fetch", "tweets"), Exit.BAD_INPUT, "pip install")


def test_traceback_flag_reraises(tmp_path):
    from edge_runtime.core.errors import EdgeError
    with pytest.raises(EdgeError):
        run_cli("--traceback", "eval", "--checkpoint", tmp_path)


def test_presets_lists_every_preset():
    from edge_model.presets import PRESETS
    out, err, code = run_cli("presets")
    assert code == Exit.OK and err == ""
    names = [line.split()[0] for line in out.splitlines()]
    assert names == list(PRESETS)
    assert "exits [1, 2, 3, 4]" in out.splitlines()[names.index("digits-vit-tiny")]


def test_help_exits_zero():
    out, _, code = run_cli("--help")
    assert code == 0 and "cache-exits" in out


# --- Hand-edited configs: one line, never a traceback (DESIGN.md section 7).

@pytest.mark.parametrize("section", ["arch", "model", "task"])
def test_config_missing_section(digits_copy, section):
    config = json.loads((digits_copy / "config.json").read_text())
    del config[section]
    (digits_copy / "config.json").write_text(json.dumps(config))
    assert_user_error(run_cli("eval", "--checkpoint", digits_copy), Exit.CORRUPT, section)


@pytest.mark.parametrize("change", [dict(model__exits=["a", "b"]), dict(model__exits=4), dict(model__heads=0)],
                         ids=["exits-not-ints", "exits-not-a-list", "zero-heads"])
def test_config_bad_model_values(digits_copy, change):
    edit_config(digits_copy, **change)
    assert_user_error(run_cli("eval", "--checkpoint", digits_copy), Exit.BAD_INPUT)
