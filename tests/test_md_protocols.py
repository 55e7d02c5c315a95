"""Protocol files and flags: merging, and clear errors for bad files (unknown key, wrong type, missing file)."""

from __future__ import annotations

from pathlib import Path

import pytest
from md_support import PROTOCOLS

from so3krates_openmm.md.commands import langevin_nvt_main
from so3krates_openmm.md.protocols import (
    ProtocolError,
    resolve_system_files,
    steps_from,
)
from so3krates_openmm.md.schemas import LANGEVIN_NVT, SCHEMAS


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_shipped_protocol_files_fit_their_schemas():
    files = sorted(PROTOCOLS.glob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        import yaml

        name = yaml.safe_load(path.read_text())["protocol"]
        values = SCHEMAS[name].read_file(path)
        assert values, path


def test_flags_override_file_and_file_overrides_defaults(tmp_path):
    protocol = write(tmp_path / "p.yaml", "temperature: 450\nfriction: 2\nseed: 5\n")
    values = LANGEVIN_NVT.resolve(["--protocol", str(protocol), "--temperature", "350"])
    assert values["temperature"] == 350.0  # flag
    assert values["friction"] == 2.0 and isinstance(values["friction"], float)  # file (int accepted as number)
    assert values["seed"] == 5
    assert values["timestep_fs"] == 0.5  # default
    assert values["_source"]["friction"] == str(protocol)
    assert not LANGEVIN_NVT.resolve(["--no-stability-check"])["stability_check"]


def test_unknown_key_names_file_and_suggests_closest(tmp_path):
    protocol = write(tmp_path / "typo.yaml", "temprature: 300\n")
    with pytest.raises(ProtocolError) as error:
        LANGEVIN_NVT.resolve(["--protocol", str(protocol)])
    message = str(error.value)
    assert str(protocol) in message and "'temprature'" in message and "did you mean 'temperature'" in message


def test_wrong_type_names_file_key_and_expected_type(tmp_path):
    protocol = write(tmp_path / "bad.yaml", "steps: lots\n")
    with pytest.raises(ProtocolError, match=r"bad\.yaml: key 'steps' must be an integer, got 'lots' \(str\)"):
        LANGEVIN_NVT.resolve(["--protocol", str(protocol)])
    write(protocol, "minimize: 1\n")
    with pytest.raises(ProtocolError, match="key 'minimize' must be true or false"):
        LANGEVIN_NVT.resolve(["--protocol", str(protocol)])
    write(protocol, "platform: Metal\n")
    with pytest.raises(ProtocolError, match="key 'platform' must be one of Reference, CPU"):
        LANGEVIN_NVT.resolve(["--protocol", str(protocol)])
    write(protocol, "- a list\n")
    with pytest.raises(ProtocolError, match="must be a mapping"):
        LANGEVIN_NVT.resolve(["--protocol", str(protocol)])
    write(protocol, "protocol: minima\n")
    with pytest.raises(ProtocolError, match="for protocol 'minima', not 'langevin_nvt'"):
        LANGEVIN_NVT.resolve(["--protocol", str(protocol)])


def test_missing_structure_file_names_key_and_file(tmp_path):
    protocol = write(tmp_path / "p.yaml", "structure: nowhere/peptide.pdb\nmodel: model.pt\n")
    values = LANGEVIN_NVT.resolve(["--protocol", str(protocol)])
    # relative input paths are relative to the protocol file
    assert values["structure"] == (tmp_path / "nowhere" / "peptide.pdb").resolve()
    with pytest.raises(ProtocolError) as error:
        resolve_system_files(LANGEVIN_NVT, values)
    message = str(error.value)
    assert str(protocol) in message and "structure" in message and "peptide.pdb" in message and "does not exist" in message


def test_script_reports_bad_protocol_and_exits_2(tmp_path, capsys):
    protocol = write(tmp_path / "p.yaml", "structure: missing.pdb\nmodel: missing.pt\nsteps: 10\n")
    assert langevin_nvt_main(["--protocol", str(protocol), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "langevin_nvt: error:" in err and "missing.pdb" in err and "structure" in err
    assert not (tmp_path / "out").exists()


def test_steps_and_ns(tmp_path):
    values = LANGEVIN_NVT.resolve(["--ns", "0.001", "--timestep-fs", "1.0"])
    assert steps_from(values) == 1000  # --ns on the command line beats the default steps
    protocol = write(tmp_path / "p.yaml", "steps: 50\n")
    assert steps_from(LANGEVIN_NVT.resolve(["--protocol", str(protocol)])) == 50
    assert steps_from(LANGEVIN_NVT.resolve(["--protocol", str(protocol), "--ns", "0.0005"])) == 1000
    with pytest.raises(ProtocolError, match="either steps or ns"):
        steps_from(LANGEVIN_NVT.resolve(["--steps", "5", "--ns", "1"]))


def test_out_of_range_flag_is_rejected():
    with pytest.raises(ProtocolError, match="'log_interval' must be at least 1"):
        LANGEVIN_NVT.resolve(["--log-interval", "0"])
