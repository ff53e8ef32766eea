"""Build hook: generate the gRPC stubs from the repository's proto/ into the build tree.

The stubs (package ``framepipe.v1``) are never checked in or edited by hand. The proto is taken
from ``$FRAMEPIPE_PROTO_DIR`` or ``../../proto`` (this directory inside the framepipe checkout).
"""
import os
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildWithStubs(build_py):
    def run(self):
        proto_root = Path(os.environ.get("FRAMEPIPE_PROTO_DIR", HERE.parent.parent / "proto"))
        proto = proto_root / "framepipe" / "v1" / "framepipe.proto"
        if not proto.is_file():
            sys.exit(f"framepipe-client: {proto} not found (set FRAMEPIPE_PROTO_DIR to the "
                     "framepipe repository's proto/ directory)")
        from grpc_tools import protoc

        out = Path(self.build_lib)
        (out / "framepipe" / "v1").mkdir(parents=True, exist_ok=True)
        rc = protoc.main(["grpc_tools.protoc", f"--proto_path={proto_root}",
                          f"--python_out={out}", f"--grpc_python_out={out}", str(proto)])
        if rc != 0:
            sys.exit(f"grpc_tools.protoc failed on {proto}")
        (out / "framepipe" / "__init__.py").touch()
        (out / "framepipe" / "v1" / "__init__.py").touch()
        super().run()



# framepipe / framepipe.v1 live only in the build tree (generated above); install_lib installs
# everything there, so they ship with framepipe_client.
setup(cmdclass={"build_py": BuildWithStubs})
