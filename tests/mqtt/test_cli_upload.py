"""`cellctl submit` of a program larger than one command message: uploaded in chunks
(put_program), then submitted by its sha256; `cellctl jobs` reads every page."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from mqtt_broker import Mosquitto
from test_cli_remote_jobs import cellctl, online_cell, write_cell

# A few MB hashed, sent in chunks and scanned by the cell: slow on a loaded machine, so
# the CLI waits longer for its reply than its 10 s default.
BIG_BOUND = 90.0


@pytest.mark.timeout(300)  # two such uploads, each bounded by BIG_BOUND
async def test_large_gcode_goes_in_chunks_and_jobs_pages(tmp_path: Path, broker: Mosquitto) -> None:
    cfg = write_cell(tmp_path / "cell.toml", broker.port)
    cfg.write_text(cfg.read_text() + "\n[commands]\njobs_page_max = 2\n")
    big = tmp_path / "big.gcode"
    lines = b"".join(b"G1 X%d Y%d F3000\n" % (i % 200, i % 150) for i in range(50_000))
    big.write_bytes(b"; big part\n" + lines * 6)  # about 5 MB: over the 4 MiB payload cap
    assert big.stat().st_size > 4 << 20
    small = tmp_path / "small.gcode"
    small.write_text("G28\nG1 X1\n")
    c = str(cfg)
    async with online_cell(cfg, broker.port, tmp_path / "daemon.log"):
        rc, out, err = cellctl("submit", c, str(big), "--timeout", "60", bound=BIG_BOUND)
        assert rc == 0, (out, err)
        assert "uploading big.gcode" in err and "in chunks" in err
        sha = hashlib.sha256(big.read_bytes()).hexdigest()
        assert (tmp_path / "state" / "programs" / sha).read_bytes() == big.read_bytes()
        for i in range(3):
            (tmp_path / f"s{i}.gcode").write_text(f"G28\nG1 X{i}\n")
            rc, out, err = cellctl("submit", c, str(tmp_path / f"s{i}.gcode"))
            assert rc == 0, (out, err)
        # Four jobs, at most two a page: the CLI asks until no more follow.
        rc, out, err = cellctl("jobs", c, "--json", "--all")
        assert rc == 0, err
        listed = json.loads(out)
        assert len(listed) == 4
        assert listed[0]["steps"][0]["program"]["sha256"] == sha
        # Sent again: the cell has the program, so one chunk answers `complete`.
        rc, out, err = cellctl("submit", c, str(big), "--timeout", "60", bound=BIG_BOUND)
        assert rc == 0, (out, err)
