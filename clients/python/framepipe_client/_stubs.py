"""Locates the gRPC stubs generated from proto/framepipe/v1/framepipe.proto.

They are never written by hand. In order of preference they come from:
  1. an installed package (``pip install ./clients/python`` generates them at build time), or
     a directory on PYTHONPATH (CMake generates ``build/<preset>/python``);
  2. for a source checkout with neither, ``grpc_tools.protoc`` run once on the checkout's
     proto into a per-user cache directory keyed by the proto's hash.
"""
from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Tuple

_PROTO_REL = Path("framepipe") / "v1" / "framepipe.proto"


def _checkout_proto() -> Path | None:
    env = os.environ.get("FRAMEPIPE_PROTO_DIR")
    candidates = [Path(env)] if env else []
    # clients/python/framepipe_client/_stubs.py -> the repository's proto/
    candidates.append(Path(__file__).resolve().parents[3] / "proto")
    for root in candidates:
        if (root / _PROTO_REL).is_file():
            return root
    return None


def _generate(proto_root: Path) -> Path:
    proto = proto_root / _PROTO_REL
    digest = hashlib.sha256(proto.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    out = cache / "framepipe_client" / digest
    marker = out / "framepipe" / "v1" / "framepipe_pb2_grpc.py"
    if not marker.is_file():
        from grpc_tools import protoc  # Debian: python3-grpc-tools

        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        (tmp / "framepipe" / "v1").mkdir(parents=True, exist_ok=True)
        rc = protoc.main(["grpc_tools.protoc", f"--proto_path={proto_root}",
                          f"--python_out={tmp}", f"--grpc_python_out={tmp}", str(proto)])
        if rc != 0:
            raise ImportError(f"grpc_tools.protoc failed on {proto} (exit {rc})")
        (tmp / "framepipe" / "__init__.py").touch()
        (tmp / "framepipe" / "v1" / "__init__.py").touch()
        try:
            tmp.rename(out)
        except OSError:  # another process got there first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
    return out


def load() -> Tuple[ModuleType, ModuleType]:
    """Returns (framepipe_pb2, framepipe_pb2_grpc)."""
    try:
        from framepipe.v1 import framepipe_pb2, framepipe_pb2_grpc

        return framepipe_pb2, framepipe_pb2_grpc
    except ImportError:
        pass
    root = _checkout_proto()
    if root is None:
        raise ImportError(
            "framepipe_client: the generated stubs (framepipe.v1.framepipe_pb2) are missing. "
            "Install the package (pip install ./clients/python), or put a build's generated "
            "stubs on PYTHONPATH (build/default/python after cmake --build), or set "
            "FRAMEPIPE_PROTO_DIR to the repository's proto/ directory.")
    sys.path.insert(0, str(_generate(root)))
    from framepipe.v1 import framepipe_pb2, framepipe_pb2_grpc

    return framepipe_pb2, framepipe_pb2_grpc


pb2, pb2_grpc = load()
