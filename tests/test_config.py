"""Configuration: defaults, TOML, environment overrides and errors that name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge.config import AgentConfig, load_config, with_overrides
from edge.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "edge.toml"


def test_example_file_matches_defaults() -> None:
    assert load_config(EXAMPLE, environ={}) == AgentConfig()


def test_example_file_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for section in dataclasses.fields(AgentConfig):
        assert f"[{section.name}]" in text
        for key in dataclasses.fields(getattr(AgentConfig(), section.name)):
            assert f"\n{key.name} = " in text, f"{section.name}.{key.name} missing from {EXAMPLE.name}"


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[dicom]\nport = 104\nallowed_calling_aes = ["A"]\n')
    config = load_config(
        path, environ={"BTT_EDGE_DICOM_PORT": "11113", "BTT_EDGE_DICOM_ALLOWED_CALLING_AES": "UNIT1, UNIT2"}
    )
    assert config.dicom.port == 11113
    assert config.dicom.allowed_calling_aes == ("UNIT1", "UNIT2")


@pytest.mark.parametrize(
    ("toml", "environ", "message"),
    [
        ("[dicom]\nport = 70000\n", {}, "dicom.port: 70000 is above the maximum 65535"),
        ("[dicom]\nprot = 1\n", {}, "dicom.prot: unknown key"),
        ("[dicm]\n", {}, "dicm: unknown key"),
        ('[dicom]\nport = "x"\n', {}, "dicom.port: expected an integer"),
        ('[agent]\nlog_format = "xml"\n', {}, "agent.log_format: 'xml' is not one of"),
        ('[dicom]\nae_title = "THIS_TITLE_IS_FAR_TOO_LONG"\n', {}, "dicom.ae_title"),
        ("", {"BTT_EDGE_DICOM_PORT": "many"}, "dicom.port: expected an integer"),
        ("", {"BTT_EDGE_NOPE_X": "1"}, "BTT_EDGE_NOPE_X"),
        ("[dicom\n", {}, "not valid TOML"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, toml: str, environ: dict[str, str], message: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(path, environ=environ)


def test_overrides_are_validated() -> None:
    with pytest.raises(ConfigError, match=r"dicom\.max_associations"):
        with_overrides(AgentConfig(), dicom={"max_associations": 0})
    assert with_overrides(AgentConfig(), dicom={"port": 4242, "ae_title": None}).dicom.port == 4242


def test_cli_output_into_a_closed_pipe_is_quiet(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes, as after `| head`
    try:
        result = subprocess.run(
            [sys.executable, "-m", "edge", "config", "show", "--data-dir", str(tmp_path)],
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    finally:
        os.close(write_end)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
