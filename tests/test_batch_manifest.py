"""Manifest reading and validation (no Dask needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from recon.batch.engine import fingerprint, options_hash, same_result
from recon.batch.manifest import load_global_config, read_manifest
from recon.errors import ConfigError


def touch(p: Path, data: bytes = b"x") -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_columns_paths_and_option_precedence(tmp_path):
    for n in ("a1.dat", "a2.dat", "b.dat", "sub/c.dat", "t.h5", "tubes.csv"):
        touch(tmp_path / n)
    (tmp_path / "row.toml").write_text('[run]\neps = 1e-5\nb0 = "none"\n')
    (tmp_path / "global.toml").write_text("[run]\neps = 1e-3\nqa = false\nforce = true\n")
    m = tmp_path / "m.csv"
    m.write_text(
        "# study manifest\nID, Raw ,raw2,traj,tubes,config\nA,a1.dat;a2.dat,,,,\n\nB,b.dat,sub/c.dat,t.h5,tubes.csv,row.toml\n"
    )
    specs = read_manifest(m, load_global_config(tmp_path / "global.toml"))
    a, b = specs
    assert a.id == "A" and a.raw == (str(tmp_path / "a1.dat"), str(tmp_path / "a2.dat"))
    assert a.options == {"eps": 1e-3, "qa": False}  # global config, its force dropped
    assert b.raw == (str(tmp_path / "b.dat"), str(tmp_path / "sub" / "c.dat"))
    assert b.options == {
        "eps": 1e-5,
        "qa": False,
        "b0": "none",
        "traj": str(tmp_path / "t.h5"),
        "calibration": str(tmp_path / "tubes.csv"),
    }
    assert b.line == 5
    assert [r for r, _ in b.input_files()] == ["raw1", "raw2", "traj", "calibration"]
    assert b.run_options().eps == 1e-5 and b.run_options().force is False


def test_all_bad_rows_reported_at_once(tmp_path):
    touch(tmp_path / "ok.dat")
    (tmp_path / "bad.toml").write_text("[run]\nnot_an_option = 1\n")
    m = tmp_path / "m.csv"
    m.write_text(
        "id,raw,config,traj\n"
        "ok,ok.dat,,\n"
        "missing,nope.dat,,\n"
        "OK,ok.dat,,\n"
        "cfg,ok.dat,bad.toml,\n"
        ",ok.dat,,\n"
        "../evil,ok.dat,,\n"
        "three,ok.dat;ok.dat;ok.dat,,\n"
        "tr,ok.dat,,none.h5\n"
    )
    with pytest.raises(ConfigError) as ei:
        read_manifest(m)
    msg = str(ei.value)
    assert str(m) in msg and "7 invalid row(s)" in msg
    assert "line 3 (id 'missing'): raw file not found" in msg and "nope.dat" in msg
    assert "line 4 (id 'OK'): duplicate id (first on line 2)" in msg
    assert "line 5 (id 'cfg'): config:" in msg and "not_an_option" in msg
    assert "line 6: empty id" in msg
    assert "line 7 (id '../evil'): id must be" in msg
    assert "line 8 (id 'three'): 3 raw files" in msg
    assert "line 9 (id 'tr'): traj file not found" in msg


@pytest.mark.parametrize(
    "text, what",
    [
        ("id,raw,extra\nA,a.dat,1\n", "unknown column(s) ['extra']"),
        ("id,traj\nA,t.h5\n", "missing required column(s) ['raw']"),
        ("id,raw\n", "lists no scans"),
        ("# only a comment\n", "manifest is empty"),
        ("id,raw,raw\nA,a.dat,b.dat\n", "repeated column(s) ['raw']"),
        ("id,raw\nA,a.dat,b.dat\n", "line 2: 3 cells but 2 columns"),
    ],
)
def test_structural_errors(tmp_path, text, what):
    touch(tmp_path / "a.dat")
    m = tmp_path / "m.csv"
    m.write_text(text)
    with pytest.raises(ConfigError) as ei:
        read_manifest(m)
    assert what in str(ei.value) and str(m) in str(ei.value)


def test_missing_manifest_and_invalid_option_value(tmp_path):
    with pytest.raises(ConfigError, match="manifest file not found"):
        read_manifest(tmp_path / "none.csv")
    touch(tmp_path / "a.dat")
    (tmp_path / "c.toml").write_text('[run]\nb0 = "bogus"\n')
    (tmp_path / "m.csv").write_text("id,raw,config\nA,a.dat,c.toml\n")
    with pytest.raises(ConfigError, match=r"line 2 \(id 'A'\): config: .*c.toml: option 'b0': must be one of"):
        read_manifest(tmp_path / "m.csv")


def test_fingerprint_content_not_path(tmp_path):
    touch(tmp_path / "a.dat", b"abc")
    touch(tmp_path / "moved" / "a.dat", b"abc")
    touch(tmp_path / "t1.h5", b"T")
    touch(tmp_path / "t2.h5", b"T")
    (tmp_path / "m1.csv").write_text("id,raw,traj\nA,a.dat,t1.h5\n")
    (tmp_path / "m2.csv").write_text("id,raw,traj\nA,moved/a.dat,t2.h5\n")
    f1 = fingerprint(read_manifest(tmp_path / "m1.csv")[0])
    f2 = fingerprint(read_manifest(tmp_path / "m2.csv")[0])
    assert f1["inputs"][0]["sha256"] == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"  # sha256("abc")
    assert same_result(f1, f2)  # same contents and options, other paths
    assert options_hash({"eps": 1e-4}) != options_hash({"eps": 1e-5})
    assert options_hash({"eps": 1e-4, "force": True}) == options_hash({"eps": 1e-4})
    touch(tmp_path / "t2.h5", b"U")
    assert not same_result(f1, fingerprint(read_manifest(tmp_path / "m2.csv")[0]))
