"""The configuration file: a bad key stops the appliance with the file, the key and what was expected."""

import pytest

from appliance.config import load_config
from appliance.errors import ConfigError
from conftest import callrec, demo_path, write_config


def test_a_valid_config_loads_with_defaults_and_absolute_paths(tmp_path):
    config = load_config(write_config(tmp_path, recorder={"data_dir": "data"}))
    assert config.recorder.preroll_s == 2.0
    assert config.recorder.flash_max_ms == 700
    assert config.recorder.format == "opus"
    assert config.recorder.data_dir == tmp_path / "data"
    assert config.line[0].ring_pin == 27 and config.line[0].notice.is_absolute()


@pytest.mark.parametrize("recorder, line, key, words", [
    ({"preroll": 2.0}, {}, "recorder.preroll", "unknown key"),
    ({}, {"hook_pin": None}, "line[0].hook_pin", "required key is missing"),
    ({}, {"hook_active": "sideways"}, "line[0].hook_active", "'low' or 'high'"),
    ({"preroll_s": "two"}, {}, "recorder.preroll_s", "valid number"),
    ({"flash_max_ms": 10}, {}, "recorder.flash_max_ms", "greater than or equal to 50"),
    ({"format": "mp3"}, {}, "recorder.format", "'opus', 'flac' or 'wav'"),
    ({}, {"name": "Shop Floor"}, "line[0].name", "should match pattern"),
    ({}, {"notice": "missing.wav"}, "line[0].notice", "no such file"),
])
def test_an_invalid_config_names_file_and_key(tmp_path, recorder, line, key, words):
    path = write_config(tmp_path, recorder=recorder, line=line)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"{key}:" in message
    assert words in message


def second_line(path, **wiring) -> None:
    """Add line t2 to the config at `path`, wired as `wiring` says (else on its own pins and cards)."""
    wiring = {"hook_pin": 22, "capture": "c2", "playback": "p2", **wiring}
    path.write_text(path.read_text() + '\n[[line]]\nname = "t2"\nhook_active = "low"\n'
                    + "".join(f"{key} = {value!r}\n".replace("'", '"') for key, value in wiring.items())
                    + 'notice = "' + load_config(path).line[0].notice.as_posix() + '"\n')


@pytest.mark.parametrize("wiring, words", [
    ({"hook_pin": 17}, "GPIO pin 17 is used twice: by line[0].hook_pin and by line[1].hook_pin"),
    ({"pause_button_pin": 27}, "GPIO pin 27 is used twice: by line[0].ring_pin and by line[1].pause_button_pin"),
    ({"capture": "cap"}, "capture device cap is used twice: by line[0].capture and by line[1].capture"),
    ({"playback": "play"}, "playback device play is used twice: by line[0].playback and by line[1].playback"),
])
def test_a_pin_or_card_used_by_two_lines_is_refused_naming_both_keys(tmp_path, wiring, words):
    path = write_config(tmp_path)
    second_line(path, **wiring)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert words in str(caught.value) and str(path) in str(caught.value)


def test_two_lines_on_their_own_pins_and_cards_load(tmp_path):
    path = write_config(tmp_path)
    second_line(path)
    assert [line.name for line in load_config(path).line] == ["t1", "t2"]


def test_not_toml_is_reported_with_the_file_name(tmp_path):
    path = tmp_path / "appliance.toml"
    path.write_text("[recorder\n")
    with pytest.raises(ConfigError, match="appliance.toml is not valid TOML"):
        load_config(path)


def test_the_command_refuses_a_bad_config_with_a_message_not_a_traceback(tmp_path):
    path = write_config(tmp_path, line={"hook_pin": "GPIO17", "hook_active": "low", "ring_pin": 27.5})
    result = callrec("run", "--config", str(path), check=False)
    assert result.returncode == 2
    assert "line[0].ring_pin" in result.stderr and str(path) in result.stderr
    assert "Traceback" not in result.stderr


def test_one_pin_spelt_two_ways_is_still_one_pin(tmp_path):
    path = write_config(tmp_path, line={"hook_pin": "GPIO27", "ring_pin": 27})
    with pytest.raises(ConfigError, match="GPIO pin 27 is used twice: by line.0..hook_pin and by line.0..ring_pin"):
        load_config(path)


def test_a_sample_rate_the_encoder_cannot_take_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match="recorder.sample_rate"):
        load_config(write_config(tmp_path, recorder={"sample_rate": 22050}))


@pytest.mark.parametrize("side, words", [
    ('external = "203.0.113.7"\nstun_server = "stun.example.net"', "external and stun_server both give"),
    ('stun_server = "stun.example.net:99999"', "a port from 1 to 65535"),
])
def test_a_trunk_side_with_a_bad_public_address_setting_is_refused_naming_it(tmp_path, side, words):
    path = tmp_path / "appliance.toml"
    path.write_text(f"""[[sip_trunk]]
name = "sip1"
notice = "{demo_path('notice-en.wav')}"

[sip_trunk.trunk]
listen = "192.0.2.10:5060"
peer = "192.0.2.1:5060"
{side}

[sip_trunk.pbx]
listen = "127.0.0.1:5070"
""")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value) and "sip_trunk[0].trunk" in str(caught.value) and words in str(caught.value)
