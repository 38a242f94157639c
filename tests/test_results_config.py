"""The ``[results]`` section: destinations as a list of tables, the ``forward`` shorthand, and bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge.config import DestinationConfig, load_config, with_overrides
from edge.errors import ConfigError


def test_destination_tables_and_forward_shorthand(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(
        '[results]\norg_root = "1.2.3.4"\nforward = ["PACS@10.0.0.5:104"]\n'
        '[[results.destinations]]\nae_title = "ARCHIVE"\nhost = "archive.lan"\nport = 11112\n'
        'kinds = ["sr", "gsps", "original"]\ntls = true\n'
    )
    config = load_config(path, environ={"BTT_EDGE_RESULTS_FORWARD": "A@[::1]:1, B@host:2"})
    names = [d.name for d in config.results.all_destinations()]
    assert names == ["ARCHIVE@archive.lan:11112", "A@::1:1", "B@host:2"]
    assert config.results.destinations[0] == DestinationConfig(
        "ARCHIVE", "archive.lan", 11112, ("sr", "gsps", "original"), True
    )
    assert config.results.all_destinations()[1].kinds == ("sr", "overlay")
    again = with_overrides(config, dicom={"port": 4242})  # nested tables survive a command-line override
    assert again.results == config.results


def test_http_destinations_are_named_by_protocol_and_url(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(
        '[[results.destinations]]\nprotocol = "dicomweb"\nurl = "https://pacs.lan/dicom-web/"\n'
        'auth = "bearer"\ntoken_file = "/etc/btt/pacs.token"\n'
        '[[results.destinations]]\nae_title = "PACS"\nhost = "pacs.lan"\n'
    )
    config = load_config(path, environ={})
    assert [d.name for d in config.results.all_destinations()] == [
        "dicomweb:https://pacs.lan/dicom-web",
        "PACS@pacs.lan:104",
    ]
    assert config.results.destinations[0].kinds == ("sr", "overlay")
    assert config.results.destinations[1].kinds == ("sr", "overlay")
    assert DestinationConfig(protocol="fhir", url="https://ehr.lan/fhir").kinds == ("fhir",)


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[results]\nforward = ["PACS@host"]\n', "results.forward: 'PACS@host' is not AE@HOST:PORT"),
        ('[results]\nforward = ["THIS_AE_IS_FAR_TOO_LONG@h:1"]\n', "is not AE@HOST:PORT"),
        ('[results]\nforward = ["P@h:70000"]\n', "has a bad port"),
        ('[results]\nforward = ["P@h:1", "P@h:1"]\n', "listed twice"),
        ('[results]\norg_root = "1.2.x"\n', "results.org_root"),
        ('[results]\norg_root = "1.2.' + "3" * 40 + '"\n', "at most 40"),
        ("[results]\nbackoff_initial_s = 10.0\nbackoff_max_s = 5.0\n", "above results.backoff_max_s"),
        ('[[results.destinations]]\nhost = "h"\n', "results.destinations.ae_title"),
        ('[[results.destinations]]\nae_title = "P"\n', "results.destinations.host"),
        ('[[results.destinations]]\nae_title = "P"\nhost = "h"\nkinds = ["pdf"]\n', "'pdf' is not one of"),
        ('[[results.destinations]]\nae_title = "P"\nhost = "h"\ntls_cert_file = "c"\n', "give both or neither"),
        ('[[results.destinations]]\nprotocol = "dicomweb"\nurl = "ftp://x"\n', "is not an http"),
        ('[[results.destinations]]\nprotocol = "dicomweb"\nurl = "https://x"\nauth = "bearer"\n', "needs it"),
        ('[[results.destinations]]\nprotocol = "fhir"\nurl = "https://x"\nauth = "basic"\n', "username and"),
        ('[[results.destinations]]\nae_title = "P"\nhost = "h"\nurl = "https://x"\n', "has no url"),
        ('[[results.destinations]]\nprotocol = "smtp"\nurl = "https://x"\n', "'smtp' is not one of"),
        (  # kinds given to a FHIR endpoint that it cannot take are refused, never silently replaced by the Bundle
            '[[results.destinations]]\nprotocol = "fhir"\nurl = "https://x"\nkinds = ["sr", "overlay"]\n',
            "a fhir destination cannot take sr, overlay",
        ),
        ('[[results.destinations]]\nae_title = "P"\nhost = "h"\nkinds = ["fhir"]\n', "dimse destination cannot take"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(path, environ={})
