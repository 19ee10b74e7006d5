"""Configuration: defaults, TOML file, environment overrides, clear errors naming the key."""

from pathlib import Path

import pytest

from connector.settings import ConfigError, load_settings


def test_defaults_need_nothing() -> None:
    settings = load_settings()
    assert settings.platform.url == "embedded"
    assert settings.database_url.startswith("sqlite+aiosqlite:///")


def test_toml_then_environment_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "c.toml"
    config.write_text('data_dir = "/srv/x"\n[server]\nport = 9000\nhost = "0.0.0.0"\n')
    monkeypatch.setenv("CONNECTOR_SERVER__PORT", "9100")
    settings = load_settings(config)
    assert settings.server.port == 9100
    assert settings.server.host == "0.0.0.0"
    assert settings.data_dir == Path("/srv/x")


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[server]\nbogus = 1\n", "server.bogus: unknown key"),
        ('[server]\nport = "x"\n', "server.port"),
        ('[platform]\nurl = "ftp://x"\n', "platform.url"),
        ('[[api.keys]]\nname = "a"\nkey = "0123456789"\nscopes = ["nope"]\n', "api.keys.0.scopes"),
        ("[server\n", "not valid TOML"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, needle: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert needle in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.toml")


def test_default_toml_documents_the_real_defaults() -> None:
    """config/default.toml must say exactly what the code does with no config at all."""
    documented = load_settings(Path(__file__).parent.parent / "config" / "default.toml")
    assert documented.model_dump() == load_settings().model_dump()


def test_example_toml_is_valid() -> None:
    example = load_settings(Path(__file__).parent.parent / "config" / "example.toml")
    assert example.database.url.startswith("postgresql+asyncpg://")


def test_a_delivery_timeout_that_could_outlast_its_claim_stops_start_up(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"delivery\.timeout"):
        load_settings(None, data_dir=tmp_path, delivery={"timeout": 60})
    assert load_settings(None, data_dir=tmp_path, delivery={"timeout": 45}).delivery.timeout == 45
