// ServiceObserver: the service's metrics hooks (the pipeline has its own, PipelineObserver).
// Implementations are thread-safe and cheap: they run on gRPC and pipeline threads.
#pragma once

#include <cstddef>
#include <cstdint>

#include "pipeline/video_stream.h"

namespace framepipe {

// Why a Process call was refused before it could open a stream.
enum class StreamRefusal { kMaxStreams, kPeerLimit, kDraining, kUnauthenticated, kCount };
const char* StreamRefusalLabel(StreamRefusal r);  // "max_streams", "peer_limit", ...

// Why the server ended a stream that had stopped sending.
// Why the server ended a stream on a timer: no first frame, no message (idle), or a result
// write its client did not accept in time (write).
enum class StreamExpiry { kFirstFrame, kIdle, kWrite, kCount };
const char* StreamExpiryLabel(StreamExpiry e);  // "first_frame", "idle", "write"

// Also the video decoders' hooks (VideoObserver: decode time, pictures, errors per codec).
class ServiceObserver : public VideoObserver {
 public:
  ~ServiceObserver() override = default;
  virtual void OnStreamOpened() {}
  virtual void OnStreamClosed() {}
  virtual void OnStreamRejected(StreamRefusal /*why*/) {}
  virtual void OnStreamExpired(StreamExpiry /*why*/) {}
  // A message that is not a ProcessRequest ended its call.
  virtual void OnMalformedMessage() {}
  virtual void OnFrameRead(size_t /*payload_bytes*/) {}
  // A result's write completed: seconds from hand-off to completion, message bytes, and the
  // frame's capture_time_us (0 when the client did not set it).
  virtual void OnResultWritten(double /*write_seconds*/, size_t /*bytes*/,
                               int64_t /*capture_time_us*/) {}
  // Frames read but not admitted because the server was shutting down.
  virtual void OnNotAdmitted(uint64_t /*frames*/) {}
  // Results that could not be written because the client went away or cancelled.
  virtual void OnResultsDiscarded(uint64_t /*results*/) {}
};

}  // namespace framepipe
