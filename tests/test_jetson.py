"""edge.jetson: the Jetson checks doctor reports, from facts (pure) and from this machine."""

from __future__ import annotations

from pathlib import Path

from edge.jetson import PlatformCheck, PlatformFacts, assess, gather_facts, parse_l4t_release

RELEASE = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 2024\n"
JETSON = PlatformFacts(
    python=(3, 10),
    l4t_release="36.4.0",
    model="NVIDIA Jetson Orin Nano Developer Kit",
    in_venv=True,
    system_site_packages=True,
    tensorrt_version="10.3.0",
    tensorrt_path="/usr/lib/python3.10/dist-packages/tensorrt/__init__.py",
    ort_providers=("CPUExecutionProvider",),
    gpu_nodes={"/dev/nvmap": True},
    backends={"tensorrt": None, "onnxruntime-gpu": "no GPU execution provider", "onnxruntime-cpu": None},
)


def _by_name(checks: list[PlatformCheck]) -> dict[str, PlatformCheck]:
    return {c.name: c for c in checks}


def test_parse_l4t_release() -> None:
    assert parse_l4t_release(RELEASE) == "36.4.0"
    assert parse_l4t_release("# R35 (release), REVISION: 5.0, GCID: 1") == "35.5.0"
    assert parse_l4t_release("not a release file") is None


def test_a_well_wired_jetson_passes_and_names_the_backend() -> None:
    checks = _by_name(assess(JETSON))
    assert all(c.ok for c in checks.values()), checks
    assert "L4T R36.4.0" in checks["jetson"].detail
    assert checks["backend"].detail.startswith("auto tries tensorrt first")
    assert "onnxruntime-gpu: no GPU execution provider" in checks["backend"].detail


def test_each_miswiring_is_named_with_its_fix() -> None:
    import dataclasses

    cases = {
        "jetpack python": dataclasses.replace(JETSON, python=(3, 11)),
        "system site packages": dataclasses.replace(JETSON, system_site_packages=False),
        "gpu devices": dataclasses.replace(JETSON, gpu_nodes={"/dev/nvmap": False}),
    }
    for name, facts in cases.items():
        check = _by_name(assess(facts))[name]
        assert not check.ok
        assert check.fix
    missing = _by_name(assess(dataclasses.replace(JETSON, tensorrt_version=None)))["tensorrt"]
    assert not missing.ok
    assert "python3-libnvinfer" in missing.fix
    pypi = dataclasses.replace(JETSON, tensorrt_path="/opt/btt-edge/venv/lib/python3.10/site-packages/tensorrt/x.py")
    assert "PyPI" in _by_name(assess(pypi))["tensorrt"].fix


def test_off_a_jetson_only_the_generic_checks_apply() -> None:
    facts = PlatformFacts(python=(3, 11), backends={"tensorrt": "tensorrt is not installed", "onnxruntime-cpu": None})
    checks = _by_name(assess(facts))
    assert set(checks) == {"python", "backend"}
    assert all(c.ok for c in checks.values())
    none = assess(PlatformFacts(python=(3, 11), backends={"onnxruntime-cpu": "cannot import onnxruntime"}))
    assert not _by_name(none)["backend"].ok


def test_gather_facts_reads_the_release_file_under_root(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text(RELEASE)
    (tmp_path / "proc/device-tree").mkdir(parents=True)
    (tmp_path / "proc/device-tree/model").write_text("NVIDIA Jetson AGX Orin\0")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/nvmap").write_text("")
    facts = gather_facts(tmp_path, backends=False)
    assert facts.l4t_release == "36.4.0"
    assert facts.model == "NVIDIA Jetson AGX Orin"
    assert facts.gpu_nodes == {str(tmp_path / "dev/nvmap"): True}
    assert _by_name(assess(facts))["jetson"].ok


def test_gather_facts_on_this_machine() -> None:
    facts = gather_facts(Path("/nonexistent-root"))
    assert facts.l4t_release is None
    assert "CPUExecutionProvider" in facts.ort_providers
    assert facts.backends["onnxruntime-cpu"] is None
    assert _by_name(assess(facts))["backend"].ok
