"""Settings layers (defaults < config.toml < PIXDESK_* < flags), typed parsing, refusals naming the key."""

from __future__ import annotations

import pytest

from pixdesk.config import Settings, load_settings, max_body_bytes
from pixdesk.errors import InvalidConfig


def load(tmp_path, toml: str = "", env: dict | None = None, **overrides):
    path = tmp_path / "config.toml"
    path.write_text(toml)
    return load_settings(path, env=env or {}, overrides=overrides)


def test_defaults():
    s = load_settings(env={"PIXDESK_CONFIG": "/nonexistent/config.toml"})
    assert s == Settings()
    assert s.server.host == "127.0.0.1" and not s.server.allow_remote and s.images.fetch_urls
    assert s.images.max_images == 12 and s.engine.max_queue == 64


def test_layers_in_order(tmp_path):
    toml = '[server]\nport = 9000\nallowed_origins = ["vscode-webview://.*"]\n[images]\nfetch_urls = false\n'
    s = load(tmp_path, toml)
    assert (
        s.server.port == 9000
        and s.server.allowed_origins == ("vscode-webview://.*",)
        and not s.images.fetch_urls
    )
    s = load(
        tmp_path,
        toml,
        env={
            "PIXDESK_SERVER_PORT": "9100",
            "PIXDESK_IMAGES_FETCH_URLS": "yes",
            "PIXDESK_SERVER_ALLOWED_HOSTS": "a.lan, b.lan",
            "PIXDESK_SERVER_BODY_TIMEOUT_S": "2.5",
        },
    )
    assert s.server.port == 9100 and s.images.fetch_urls and s.server.allowed_hosts == ("a.lan", "b.lan")
    assert s.server.body_timeout_s == 2.5
    s = load(tmp_path, toml, env={"PIXDESK_SERVER_PORT": "9100"}, **{"server.port": 9200})
    assert s.server.port == 9200


@pytest.mark.parametrize(
    "toml,key",
    [
        ("[server]\nprot = 1\n", "server.prot"),
        ("[sever]\nport = 1\n", "sever"),
        ("[server]\nport = 70000\n", "server.port"),
        ('[server]\nport = "x"\n', "server.port"),
        ("[server]\nallow_remote = 1\n", "server.allow_remote"),
        ('[server]\nallowed_origins = "x"\n', "server.allowed_origins"),
        ('[server]\nallowed_origins = ["("]\n', "server.allowed_origins"),
        ("[server]\nheader_timeout_s = 0\n", "server.header_timeout_s"),
        ("[server]\nmax_header_bytes = 10\n", "server.max_header_bytes"),
        ("[images]\nmax_images = 0\n", "images.max_images"),
        ("[images]\nfetch_timeout_s = -1\n", "images.fetch_timeout_s"),
        ("[engine]\nmax_batch = 0\n", "engine.max_batch"),
        ('[model]\nquant = "int3"\n', "model.quant"),
    ],
)
def test_bad_values_name_the_key(tmp_path, toml, key):
    with pytest.raises(InvalidConfig) as e:
        load(tmp_path, toml)
    assert e.value.param == key and key.split(".")[-1] in e.value.message


def test_bad_env_values_name_the_key(tmp_path):
    with pytest.raises(InvalidConfig) as e:
        load(tmp_path, env={"PIXDESK_SERVER_ALLOW_REMOTE": "maybe"})
    assert e.value.param == "server.allow_remote" and "environment" in e.value.message


def test_body_cap_is_derived_from_the_image_limits(tmp_path):
    s = load(tmp_path, "[images]\nmax_images = 2\nmax_bytes = 300\n")
    assert max_body_bytes(s) == 2 * 400 + 2**20  # base64 of two 300-byte images + 1 MiB for the rest
    assert max_body_bytes(load(tmp_path, "[server]\nmax_body_bytes = 5000\n")) == 5000
    assert max_body_bytes(Settings()) == 12 * (-(-32 * 2**20 // 3) * 4) + 2**20


def test_config_example_is_valid_and_matches_the_defaults():
    """config.example.toml documents every setting with its default value."""
    from pathlib import Path

    from pixdesk.config import Settings, load_settings

    example = Path(__file__).resolve().parents[1] / "config.example.toml"
    assert load_settings(example, env={}) == Settings()
