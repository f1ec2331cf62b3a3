from __future__ import annotations

from pathlib import Path

import pytest

from openeyesd.config import find_config_path, load_config, parse_config
from openeyesd.errors import ConfigError
from tests.conftest import config_dict

REPO = Path(__file__).resolve().parents[2]


def test_example_config_is_valid_and_resolves_paths_against_its_folder() -> None:
    config = load_config(REPO / "config.toml")
    assert config.watch[0].path == REPO / "incoming"
    assert config.output.path == REPO / "outgoing"
    assert config.ledger_url == f"sqlite:///{REPO}/state/ledger.sqlite3"


def test_invalid_value_names_key_value_and_what_is_allowed(tmp_path: Path) -> None:
    raw = config_dict(tmp_path, worker={"concurrency": 0})
    with pytest.raises(ConfigError) as caught:
        parse_config(raw, base_dir=tmp_path)
    message = str(caught.value)
    assert "worker.concurrency" in message and "0" in message and "greater than" in message


def test_unknown_key_is_rejected(tmp_path: Path) -> None:
    raw = config_dict(tmp_path, output={"path": "out", "colour": "red"})
    with pytest.raises(ConfigError, match=r"output\.colour"):
        parse_config(raw, base_dir=tmp_path)


def test_bad_enum_lists_allowed_values(tmp_path: Path) -> None:
    raw = config_dict(tmp_path)
    raw["watch"][0]["mode"] = "fanotify"
    with pytest.raises(ConfigError, match=r"watch\.0\.mode.*'inotify' or 'poll'"):
        parse_config(raw, base_dir=tmp_path)


def test_output_inside_watched_folder_is_refused(tmp_path: Path) -> None:
    raw = config_dict(tmp_path, output={"path": str(tmp_path / "incoming" / "out")})
    with pytest.raises(ConfigError, match="overlaps"):
        parse_config(raw, base_dir=tmp_path)


def test_archive_needs_a_folder_outside_the_watched_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="archive_path"):
        parse_config(config_dict(tmp_path, originals={"action": "archive"}), base_dir=tmp_path)
    inside = {"action": "archive", "archive_path": str(tmp_path / "incoming" / "a")}
    with pytest.raises(ConfigError, match="inside"):
        parse_config(config_dict(tmp_path, originals=inside), base_dir=tmp_path)


def test_naming_must_keep_the_suffix(tmp_path: Path) -> None:
    raw = config_dict(tmp_path, output={"path": "out", "naming": "{stem}.png"})
    with pytest.raises(ConfigError, match=r"output\.naming"):
        parse_config(raw, base_dir=tmp_path)


def test_missing_file_and_bad_toml_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[output\npath=1")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_config_path_lookup_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("OPENEYES_CONFIG", raising=False)
    assert find_config_path(None) == Path("/etc/openeyes/config.toml")
    (tmp_path / "config.toml").write_text("")
    assert find_config_path(None) == Path("config.toml")
    monkeypatch.setenv("OPENEYES_CONFIG", "/x/y.toml")
    assert find_config_path(None) == Path("/x/y.toml")
    assert find_config_path("given.toml") == Path("given.toml")


def test_reference_folder_inside_a_watched_folder_is_refused(tmp_path: Path) -> None:
    raw = config_dict(tmp_path, eyes={"references": [str(tmp_path / "incoming" / "refs")]})
    with pytest.raises(ConfigError, match=r"eyes\.references"):
        parse_config(raw, base_dir=tmp_path)
