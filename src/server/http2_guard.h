// Http2Guard: inspects one HTTP/2 connection between a client and gRPC, frame by frame, and
// stops what gRPC 1.51 cannot stop itself (Debian's gRPC predates upstream fixes for these):
//
//  * header floods: a header block (HEADERS + CONTINUATION) over max_header_block_bytes or
//    max_header_frames frames closes the connection (GOAWAY ENHANCE_YOUR_CALM) before gRPC
//    buffers or decodes it;
//  * rapid reset: stream resets (the client's RST_STREAM, and streams gRPC had to refuse) beyond
//    a token bucket close the connection; so do floods of the other frames that cost a client
//    no flow-control window: PING, SETTINGS, PRIORITY, GOAWAY and empty DATA frames, and
//    WINDOW_UPDATE frames beyond what the data gRPC sent explains (gRPC 1.51 aborts on a
//    stream of WINDOW_UPDATEs on one connection within seconds; empty DATA frames grow it);
//  * message size at the length prefix: a gRPC message whose 5-byte prefix declares more than
//    max_message_bytes (or is compressed while compression is off) ends its stream at once with
//    RESOURCE_EXHAUSTED / INVALID_ARGUMENT trailers, without gRPC receiving (and buffering) the
//    body - gRPC 1.51 checks the size only once the whole message has arrived;
//  * messages a method does not take: with max_messages_by_path, header blocks are decoded
//    (HPACK, mirroring gRPC's table) and a call gets at most its method's number of messages
//    (gRPC 1.51 holds, without bound, the messages of a call whose handler is not reading);
//  * stream windows: SETTINGS_INITIAL_WINDOW_SIZE in gRPC's SETTINGS is cut to a fixed window,
//    so gRPC's BDP probing can widen the connection window without widening every stream's;
//  * protocol basics: the client preface, the first frame, and frames held whole (all but DATA)
//    capped at their header: 16 KiB, header frames at the header-block limit.
//
// DATA frames are never buffered whole: their payload streams through, re-framed where the
// guard has to look inside (it emits its own DATA frame for each run of message body and one for
// each length prefix it has checked; padding is stripped and its flow-control credit handed
// back). So the advertised frame size can be large (gRPC clients then send bodies in frames of
// megabytes), and a run of message body the guard has already judged can go from the client's
// socket to gRPC's without being read at all (PassThroughBytes / Spliced: the front door
// splices it, kernel to kernel).
//
// Pure logic: bytes in, bytes out, no sockets and no threads (the front door owns those), so
// every rule is unit-tested with crafted frames. One instance per connection, used by one
// thread at a time.
#pragma once

#include <atomic>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/clock.h"
#include "common/token_bucket.h"

namespace framepipe {

struct Http2Limits {
  // SETTINGS_MAX_FRAME_SIZE gRPC advertises: HTTP/2's largest, so that clients send message
  // bodies in few frames. DATA frames are not held by the guard (their payload streams through),
  // so their size costs it nothing; gRPC 1.51's client does not always keep to the advertised
  // size either (4 MB frames against 1 MiB advertised, once its windows grew), so DATA is not
  // checked against it.
  uint32_t max_frame_bytes = (1u << 24) - 1;
  uint32_t max_control_frame_bytes = 16384;  // any other frame but a header block's (these are
                                             // held whole: PING, SETTINGS, GOAWAY, ...)
  uint32_t max_header_block_bytes = 65536;   // one HEADERS + CONTINUATION block, encoded
  uint32_t max_header_frames = 32;           // frames in one header block
  uint32_t max_tracked_streams = 1024;       // client streams open at once (gRPC refuses more
                                             // than its max_concurrent_streams; this bounds the
                                             // guard's own table)
  double resets_per_second = 100;            // client resets + refused streams, sustained
  double reset_burst = 200;
  double control_frames_per_second = 100;  // PING, SETTINGS, PRIORITY, GOAWAY, empty DATA
  double control_frame_burst = 500;        // (no END_STREAM), sustained / burst
  // WINDOW_UPDATE frames: a client sends them as it reads what gRPC sends - gRPC's own client
  // about three per result message (the connection's, the stream's, and a few bytes more for
  // the stream when its reader asks for the next message) - so each DATA frame gRPC sends earns
  // the client window_updates_per_data_frame, plus one per data_bytes_per_window_update of its
  // payload (several messages in one frame). Beyond what it has earned, a bucket of its own
  // (opening updates, BDP-probing clients raising their windows). gRPC 1.51 takes any number:
  // one connection sending nothing but WINDOW_UPDATEs aborts it within about ten seconds.
  double window_updates_per_data_frame = 4;
  uint32_t data_bytes_per_window_update = 64;
  double window_updates_per_second = 1000;
  double window_update_burst = 10000;
  uint64_t max_message_bytes = 32u << 20;  // gRPC messages, checked at their length prefix
  bool allow_compressed_messages = false;
  // The most SETTINGS_INITIAL_WINDOW_SIZE (a stream's flow-control window) gRPC's SETTINGS may
  // tell the client; a larger value is lowered to it on the way (0: passed on as gRPC says).
  // gRPC's BDP probing raises the window it announces with the connection's bandwidth-delay
  // product; with the client told this much, each stream still brings at most this much that
  // nobody has read, while gRPC's connection window (which BDP raises too, and no other knob
  // of 1.51 can) lets a client send a whole frame without waiting for a WINDOW_UPDATE every
  // 64 KiB. A client that keeps to the smaller window never exceeds gRPC's larger one, and gRPC
  // sizes its WINDOW_UPDATEs by what it has read, which the client's window follows.
  uint32_t max_initial_window = 0;
  // Messages a call of these methods (:path) may send. gRPC 1.51 keeps taking the messages of a
  // call its handler is not reading - a health Watch after its request, a reflection stream whose
  // answers are not read - and holds every one: 32 connections x 8 Watch calls sending empty
  // messages took a server from 78 MiB to 1.7 GB in 15 s. With a non-empty map the guard decodes
  // every header block (HPACK; a block it cannot decode closes the connection, as gRPC would) and
  // ends a call at its first message over the limit. Methods not listed: no limit. (The decoder,
  // nghttp2's, refuses a single header field over 64 KiB - past max_header_block_bytes anyway.)
  std::vector<std::pair<std::string, uint32_t>> max_messages_by_path;
  // The guard runs inside gRPC's own reads and writes of the client's socket (the front door's
  // inline path, see front_door_inline.cc) rather than in a relay: what it passes on should be
  // the bytes as they came wherever it can, so that they need not be copied. A tracked stream's
  // DATA frame then goes to gRPC as it came when every length prefix in it is among the bytes
  // at hand and passes, and the rest of it can only be body of a message already judged (else it
  // is re-framed as in the relay); and the server's DATA for a stream the guard ended is passed
  // on (the client ignores frames after the reset it was sent) rather than dropped, so the guard
  // never has to hand flow-control credit back to gRPC outside gRPC's own reads.
  bool inline_mode = false;
};

// What ended a connection (or a stream) in the guard; labels for metrics and logs.
enum class Http2Violation {
  kNone,
  kBadPreface,
  kFrameTooLarge,
  kHeaderBlockTooLarge,
  kTooManyHeaderFrames,
  kResetFlood,
  kControlFlood,
  kTooManyStreams,
  kProtocol,
  kWindowUpdateFlood,
  kCount
};
const char* Http2ViolationLabel(Http2Violation v);

// A stream the guard ended: at a message's length prefix (too large, compressed, or one message
// more than its method takes), or at its headers because its client address already had its
// limit of streams open at gRPC.
enum class StreamRejection {
  kMessageTooLarge,
  kCompressed,
  kPeerStreams,
  kTooManyMessages,
  kCount
};
const char* StreamRejectionLabel(StreamRejection r);

// What the guard passes on, in order: views into the caller's input (valid until the caller
// reuses that buffer; adjacent ones are merged, so a read's worth of frames is usually one view
// and reaches the socket with one writev, without a copy) and bytes of the guard's own.
class Http2Out {
 public:
  void Pass(std::string_view v);
  void Copy(std::string_view v) { Add(std::string(v)); }
  void Add(std::string s);
  const std::vector<std::string_view>& parts() const { return parts_; }
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  void Clear();

 private:
  std::vector<std::string_view> parts_;
  std::deque<std::string> owned_;  // stable addresses for the views into them
  size_t size_ = 0;
};

// Streams open at gRPC (from the client's HEADERS until gRPC ends or either side resets the
// stream) that the connections of one client address may have together: gRPC holds every such
// call (~17 KiB) whether or not framepipe's service ever sees it (a health Watch, a call whose
// request never comes). Shared by the guards of the address's connections; thread-safe.
class StreamQuota {
 public:
  explicit StreamQuota(uint32_t max) : max_(max) {}
  bool TryAcquire();
  void Release(uint32_t n) { open_.fetch_sub(n, std::memory_order_relaxed); }
  uint32_t open() const { return open_.load(std::memory_order_relaxed); }
  uint32_t max() const { return max_; }

 private:
  const uint32_t max_;
  std::atomic<uint32_t> open_{0};
};

class Http2Guard {
 public:
  // `quota` (optional): the client address's limit of streams open at gRPC.
  explicit Http2Guard(Http2Limits limits, std::shared_ptr<StreamQuota> quota = nullptr);
  ~Http2Guard();
  Http2Guard(const Http2Guard&) = delete;
  Http2Guard& operator=(const Http2Guard&) = delete;

  // Bytes from the client. What may reach gRPC is appended to *to_server, what the guard answers
  // the client itself (GOAWAY, WINDOW_UPDATE, trailers of a stream it ended) to *to_client.
  // Returns false when the connection must close (a GOAWAY saying why is in *to_client).
  bool FromClient(std::string_view bytes, TimePoint now, Http2Out* to_server, Http2Out* to_client);
  // Bytes from gRPC, passed on to *to_client, except data of streams the guard ended (their
  // flow-control credit is handed back to gRPC through *to_server). Returns false when the
  // connection must close (streams gRPC had to refuse count against the reset budget).
  bool FromServer(std::string_view bytes, TimePoint now, Http2Out* to_server, Http2Out* to_client);

  // Inline mode: the bytes of the same read that follow those the next FromClient call gets (a
  // read lands in several buffers, given to FromClient one by one), so that a DATA frame whose
  // length prefixes lie in a later buffer can still be judged whole and passed as it came.
  // The views must stay valid until that FromClient call returns; null: none.
  void SetReadAhead(const std::string_view* later, size_t count) {
    later_ = later;
    later_count_ = count;
  }

  // Client bytes just ahead that the guard has already judged: the rest of a run of message body
  // (inside a gRPC message whose prefix it checked) or of a DATA frame on a stream it does not
  // track. They may go from the client to gRPC without passing through FromClient (splice); then
  // Spliced() says how many did.
  size_t PassThroughBytes() const;
  // `n` (at most PassThroughBytes()) client bytes went to gRPC unread. Like FromClient, it may
  // append the guard's own frames (the end of a DATA frame) to *to_server and *to_client.
  bool Spliced(size_t n, Http2Out* to_server, Http2Out* to_client);

  bool preface_received() const { return preface_done_; }
  Http2Violation violation() const { return violation_; }
  const std::string& violation_detail() const { return detail_; }
  // Streams ended at their prefix since the last call (for metrics and logs), then reset.
  uint64_t TakeRejections(StreamRejection r);

  // The frames a refused connection gets before it is closed: the server preface and a GOAWAY
  // with `reason` as debug data.
  static std::string RefusalFrames(std::string_view reason);

 private:
  struct StreamIn {
    uint32_t max_messages = 0;   // from the method (Http2Limits::max_messages_by_path); 0: any
    uint32_t messages = 0;       // messages begun
    uint32_t msg_remaining = 0;  // bytes of the current message still to come
    uint8_t prefix[5] = {};
    uint8_t prefix_have = 0;
    uint8_t prefix_passed = 0;    // of prefix_have, bytes gRPC already has (a frame passed intact)
    bool server_headers = false;  // gRPC has sent this stream's response headers
  };

  // How a client DATA frame's payload is handled while it streams through.
  enum class DataMode {
    kNone,     // not inside a DATA frame
    kForward,  // a stream the guard does not track: passed on as it is (gRPC answers it)
    kScan,     // a tracked stream: re-framed, every length prefix checked
    kDrop,     // a stream the guard ended: dropped, its connection window credited back
  };
  struct DataIn {
    DataMode mode = DataMode::kNone;
    uint32_t sid = 0;
    uint8_t flags = 0;
    uint32_t len = 0;             // payload bytes, padding included
    uint32_t remaining = 0;       // payload bytes still to come
    bool pad_pending = false;     // PADDED: the pad length byte is still to come
    uint32_t pad = 0;             // padding bytes at the end of the payload
    uint32_t segment = 0;         // kScan: body bytes owed to the DATA frame the guard emitted
    bool intact = false;          // kScan, inline mode: the frame goes to gRPC as it came
    bool untrack_at_end = false;  // gRPC reset the stream mid-frame
    uint64_t credit_conn = 0;     // bytes gRPC never gets: window handed back to the client
    uint64_t credit_stream = 0;
  };

  size_t UnitSize(std::string_view data) const;
  bool ProcessUnit(std::string_view unit, TimePoint now, Http2Out* to_server, Http2Out* to_client);
  // Checks a frame's length from its header, before any of its payload is held.
  bool CheckFrameSize(const uint8_t* h, Http2Out* to_client);
  bool HandleClientFrame(const uint8_t* h, TimePoint now, Http2Out* to_server, Http2Out* to_client);
  // What becomes of a header frame: passed on to gRPC, or the connection closes (the violation
  // is recorded and its GOAWAY queued).
  enum class Verdict { kPass, kClose };
  Verdict OnHeaderFrame(uint8_t type, uint32_t sid, uint8_t flags, uint32_t len, TimePoint now,
                        Http2Out* to_client);
  bool BeginData(const uint8_t* h, TimePoint now, Http2Out* to_server, Http2Out* to_client);
  // A frame that costs the client no flow-control window, against its bucket.
  bool TakeControlFrame(TimePoint now, Http2Out* to_client);
  // `n` payload bytes of the current DATA frame (`p` null: they were spliced past the guard).
  bool DataPayload(const char* p, size_t n, Http2Out* to_server, Http2Out* to_client);
  bool ScanPayload(const char* p, size_t n, Http2Out* to_server, Http2Out* to_client);
  bool ScanIntact(const char* p, size_t n, Http2Out* to_server, Http2Out* to_client);
  // Inline mode: whether the DATA frame of `len` bytes on stream `s` just begun can go to gRPC
  // as it came, judged from `ahead_` (see Http2Limits::inline_mode).
  bool CanPassIntact(const StreamIn& s, uint32_t len) const;
  void EndData(Http2Out* to_server);
  // A complete length prefix beginning a stream's next message (*messages: those begun so far,
  // counted on when `max_messages` limits them): false (and *why, *declared) when it ends the
  // stream.
  bool CheckPrefix(const uint8_t* prefix, uint32_t max_messages, uint32_t* messages,
                   StreamRejection* why, uint64_t* declared) const;
  void RejectStream(uint32_t id, StreamIn* s, StreamRejection why, uint64_t declared);
  // A stream is no longer open at gRPC: its unit of the quota comes back.
  void Unopen(uint32_t id);
  bool Violation(Http2Violation v, std::string detail, Http2Out* to_client);
  void FlushInjected(Http2Out* to_server, Http2Out* to_client);

  // Feeds a header frame's block fragment to the HPACK decoder (only with a non-empty
  // max_messages_by_path); at the end of the block, the stream's message limit from its :path.
  bool DecodeHeaderFragment(const uint8_t* h, uint32_t len, Http2Out* to_client);

  const Http2Limits limits_;
  struct Hpack;
  std::unique_ptr<Hpack> hpack_;  // null: header blocks are not decoded
  std::string path_;              // :path of the header block being decoded
  // Client -> server.
  std::string in_;             // an incomplete frame (or preface) carried over between reads
  bool unit_is_copy_ = false;  // the unit being handled lives in in_: pass on a copy of it
  std::string_view ahead_;     // the bytes of this read after the unit being handled
  const std::string_view* later_ = nullptr;  // and those after them (SetReadAhead)
  size_t later_count_ = 0;
  bool preface_done_ = false;
  bool settings_seen_ = false;
  uint32_t header_stream_ = 0;  // != 0: a header block is open (CONTINUATION expected)
  uint32_t header_bytes_ = 0;
  uint32_t header_frames_ = 0;
  uint32_t last_stream_ = 0;  // highest client stream id passed to gRPC
  std::map<uint32_t, StreamIn> streams_;
  std::set<uint32_t> rejected_;  // streams the guard ended (bounded, oldest dropped)
  DataIn data_;
  TokenBucket resets_;
  TokenBucket control_;
  TokenBucket window_updates_;
  double earned_window_updates_ = 0;  // from gRPC's DATA frames, spent before the bucket
  Http2Violation violation_ = Http2Violation::kNone;
  std::string detail_;
  uint64_t rejections_[static_cast<int>(StreamRejection::kCount)] = {};
  std::shared_ptr<StreamQuota> quota_;
  std::set<uint32_t> open_;  // streams holding a unit of quota_
  // Server -> client: a streaming parse (frames are passed on as their bytes arrive).
  uint8_t s_header_[9] = {};
  uint32_t s_header_have_ = 0;
  uint32_t s_remaining_ = 0;  // payload bytes of the current server frame still to come
  bool s_dropping_ = false;   // the current server frame is not passed on
  bool s_first_frame_done_ = false;
  bool s_in_header_block_ = false;
  bool s_settings_ = false;    // the current server frame is SETTINGS (not an ACK)
  uint8_t s_setting_[6] = {};  // the SETTINGS entry being read
  uint32_t s_setting_have_ = 0;
  uint64_t s_dropped_data_ = 0;  // DATA bytes dropped, not yet credited back to gRPC
  // Frames the guard injects, waiting for a frame boundary in their direction.
  std::string inject_to_client_;
  std::string inject_to_server_;
};

}  // namespace framepipe
