// Compressed packets from a video file or camera (libavformat demux): `framepipe stream
// --send packets`. Each packet is sent as it is stored (one access unit, decode order, with its
// pts); nothing is decoded or re-encoded on the client.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "media/frame_source.h"

namespace framepipe {

// Opens the input once to check it (H.264 or HEVC video, a clear error otherwise) and returns a
// factory making one independent packet source per stream.
absl::StatusOr<std::function<std::unique_ptr<FrameSource>(int stream)>> MakePacketSourceFactory(
    const SourceOptions& options);

// Every packet of a file's H.264/HEVC video stream, in decode order, read at once (the
// benchmark's workloads); the same checks and errors as --send packets.
struct VideoPackets {
  VideoInfo info;
  std::vector<std::string> packets;
};
absl::StatusOr<VideoPackets> ReadVideoPackets(const std::string& path);

}  // namespace framepipe
