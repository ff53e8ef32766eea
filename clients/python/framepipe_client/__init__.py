"""framepipe_client: stream video frames to a framepipe server, get ordered results back.

    from framepipe_client import FramePipeClient, StreamConfig

    with FramePipeClient("127.0.0.1:50051") as client:
        for r in client.process(frames, config=StreamConfig(max_in_flight=8)):
            if r.ok:
                print(r.seq, r.analysis.mean_luma, r.enrichment.scene_cut)
            else:
                print(r.seq, r.status.name, r.error)

The gRPC stubs underneath are generated from proto/framepipe/v1/framepipe.proto.
"""
from .client import FramePipeClient
from .errors import FrameError, FramePipeError
from .types import (Analysis, Enrichment, Frame, FrameResult, FrameStatus, Overload,
                    PixelFormat, ServerStats, StreamConfig, Timings, TlsConfig)

__version__ = "0.1.0"

__all__ = [
    "Analysis", "Enrichment", "Frame", "FrameError", "FramePipeClient", "FramePipeError",
    "FrameResult", "FrameStatus", "Overload", "PixelFormat", "ServerStats", "StreamConfig",
    "Timings", "TlsConfig", "__version__",
]
