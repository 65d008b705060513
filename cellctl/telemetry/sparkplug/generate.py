"""Regenerates sparkplug_b_pb2.py from sparkplug_b.proto with grpcio-tools' protoc.

Run from anywhere: `python -m cellctl.telemetry.sparkplug.generate` (needs the `test`
extra, which brings grpcio-tools). The output is committed, so that installing
cellctl needs no protoc; tests/unit/test_sparkplug_proto.py regenerates it into a
temporary folder and checks that the committed file is what protoc makes today.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
PROTO = "sparkplug_b.proto"


def generate(out_dir: Path) -> Path:
    """Runs protoc on the .proto (module and type stub); returns the module's path."""
    from grpc_tools import protoc  # a build tool, not a runtime dependency

    args = [f"--proto_path={HERE}", f"--python_out={out_dir}", f"--pyi_out={out_dir}", PROTO]
    rc = protoc.main(["protoc", *args])
    if rc != 0:
        raise RuntimeError(f"protoc failed ({rc}) on {HERE / PROTO}")
    return out_dir / "sparkplug_b_pb2.py"


if __name__ == "__main__":
    print(generate(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE))
