"""Protocol files and flags (one options layer, jsonargparse): flags over files over defaults, and clear one-line
errors for bad files (unknown key, wrong type, missing file)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from md_support import PROTOCOLS

from so3krates_openmm.cli.common import parse_protocol
from so3krates_openmm.cli.langevin_nvt import main as langevin_nvt_main
from so3krates_openmm.md.protocols import (
    PROTOCOLS as OPTIONS,
)
from so3krates_openmm.md.protocols import (
    LangevinNVTOptions,
    ProtocolError,
    write_resolved_protocol,
)
from so3krates_openmm.options import OptionsError


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def parse(argv: list[str]) -> LangevinNVTOptions:
    return parse_protocol(LangevinNVTOptions, argv)[0]


def test_shipped_protocol_files_fit_their_options():
    files = sorted(PROTOCOLS.glob("*.yaml"))
    assert len(files) >= 6
    for path in files:
        name = yaml.safe_load(path.read_text())["protocol"]
        options, read = parse_protocol(OPTIONS[name], ["--protocol", str(path)])
        assert read == [str(path)] and options.n_steps > 0, path


def test_flags_override_file_and_file_overrides_defaults(tmp_path):
    protocol = write(tmp_path / "p.yaml", "temperature: 450\nfriction: 2\nseed: 5\n")
    options = parse(["--protocol", str(protocol), "--temperature", "350"])
    assert options.temperature == 350.0  # flag
    assert options.friction == 2.0 and isinstance(options.friction, float)  # file (int accepted as number)
    assert options.seed == 5 and type(options.seed) is int
    assert options.timestep_fs == 0.5  # default
    assert not parse(["--no-stability-check"]).stability_check


def test_unknown_key_is_an_error_naming_it(tmp_path):
    protocol = write(tmp_path / "typo.yaml", "temprature: 300\n")
    with pytest.raises(OptionsError, match=r"unknown key 'temprature'; did you mean 'temperature'\?"):
        parse(["--protocol", str(protocol)])


def test_wrong_type_names_key_and_expected_type(tmp_path):
    protocol = write(tmp_path / "bad.yaml", "steps: lots\n")
    with pytest.raises(OptionsError, match=r"option 'steps': .*int.*\(given: lots\)"):
        parse(["--protocol", str(protocol)])
    write(protocol, "platform: Metal\n")
    with pytest.raises(OptionsError, match=r"option 'platform': .*'Reference', 'CPU'.*Metal"):
        parse(["--protocol", str(protocol)])
    write(protocol, "protocol: minima\n")
    with pytest.raises(OptionsError, match=r"option 'protocol': .*'langevin_nvt'.*minima"):
        parse(["--protocol", str(protocol)])
    with pytest.raises(OptionsError, match=r"option 'log_interval': .*>=1"):
        parse(["--log-interval", "0"])


def test_input_files_are_checked_and_relative_to_the_protocol_file(tmp_path):
    (tmp_path / "inputs").mkdir()
    (tmp_path / "inputs" / "peptide.pdb").write_text("")
    protocol = write(tmp_path / "p.yaml", "structure: inputs/peptide.pdb\n")
    assert parse(["--protocol", str(protocol)]).structure == tmp_path / "inputs" / "peptide.pdb"
    write(protocol, "structure: nowhere/peptide.pdb\n")
    with pytest.raises(OptionsError) as error:
        parse(["--protocol", str(protocol)])
    message = str(error.value)
    assert "option 'structure'" in message and "peptide.pdb" in message and "does not exist" in message
    assert "\n" not in message


def test_script_reports_bad_protocol_and_exits_2(tmp_path, capsys):
    protocol = write(tmp_path / "p.yaml", "structure: missing.pdb\nmodel: missing.pt\nsteps: 10\n")
    assert langevin_nvt_main(["--protocol", str(protocol), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("langevin_nvt: error:") and "missing.pdb" in err and "structure" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert langevin_nvt_main(["--system", "nosuch"]) == 2
    assert "option 'system'" in capsys.readouterr().err


def test_help_shows_defaults_and_units(capsys):
    with pytest.raises(SystemExit) as exit_info:
        langevin_nvt_main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "--timestep-fs TIMESTEP_FS time step in fs (type: NonNegativeFloat, default: 0.5)" in text
    assert "temperature in K" in text and "default: 300.0" in text
    assert "--protocol FILE" in text and "--no-process-tuning" in text


def test_steps_and_ns(tmp_path):
    assert parse(["--ns", "0.001", "--timestep-fs", "1.0"]).n_steps == 1000
    assert parse([]).n_steps == LangevinNVTOptions.default_steps
    protocol = write(tmp_path / "p.yaml", "steps: 50\n")
    assert parse(["--protocol", str(protocol)]).n_steps == 50
    assert parse(["--protocol", str(protocol), "--ns", "0.0005"]).n_steps == 1000  # a flag beats the file
    write(protocol, "ns: 0.001\n")
    assert parse(["--protocol", str(protocol), "--steps", "7"]).n_steps == 7
    with pytest.raises(ProtocolError, match="either steps .* or ns .*, not both"):
        _ = parse(["--steps", "5", "--ns", "1"]).n_steps


def test_resolved_protocol_file_reproduces_the_options(tmp_path):
    options = parse(["--steps", "30", "--temperature", "310", "--no-minimize", "--output", str(tmp_path / "run")])
    write_resolved_protocol(options, tmp_path / "resolved.yaml", seed=17, source="test")
    again = parse(["--protocol", str(tmp_path / "resolved.yaml")])
    assert (again.n_steps, again.temperature, again.minimize, again.seed) == (30, 310.0, False, 17)
