"""framepipe_client: stream video frames to a framepipe server, get ordered results back.

    from framepipe_client import FramePipeClient, StreamConfig

    with FramePipeClient("127.0.0.1:50051") as client:
        for r in client.process(frames, config=StreamConfig(max_in_flight=8)):
            if r.ok:
                print(r.seq, r.analysis.mean_luma, r.enrichment.scene_cut)
            else:
                print(r.seq, r.status.name, r.error)

Compressed video (H.264/HEVC) goes as it is, decoded by the server:

    with FramePipeClient("127.0.0.1:50051") as client:
        for r in client.process_video("camera.mp4"):
            print(r.seq, r.pts, r.status.name, r.analysis.mean_luma if r.ok else r.error)

The gRPC stubs underneath are generated from proto/framepipe/v1/framepipe.proto.
"""
from .client import FramePipeClient
from .errors import FrameError, FramePipeError
from .types import (Analysis, Enrichment, Frame, FrameResult, FrameStatus, Overload,
                    PixelFormat, ServerStats, StreamConfig, Timings, TlsConfig, VideoCodec,
                    VideoFormat, VideoPacket)
from .video import open_video_packets

__version__ = "0.1.0"

__all__ = [
    "Analysis", "Enrichment", "Frame", "FrameError", "FramePipeClient", "FramePipeError",
    "FrameResult", "FrameStatus", "Overload", "PixelFormat", "ServerStats", "StreamConfig",
    "Timings", "TlsConfig", "VideoCodec", "VideoFormat", "VideoPacket", "open_video_packets",
    "__version__",
]
