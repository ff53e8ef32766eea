// RawCall: a Process call whose messages are raw bytes (valid ProcessRequests or anything else),
// driven by gRPC's generic callback API - for tests of what the server does with malformed
// messages, cancellation at any moment and client deadlines.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "common/tsan.h"
#include "framepipe/v1/framepipe.pb.h"
#include "grpcpp/generic/generic_stub.h"
#include "grpcpp/grpcpp.h"
#include "test_util.h"

namespace framepipe::testing {

inline grpc::ByteBuffer ToByteBuffer(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

inline std::string Serialized(const google::protobuf::Message& m) {
  std::string s;
  m.SerializeToString(&s);
  return s;
}

class RawCall : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  struct Script {
    std::vector<std::string> messages;  // written in order
    bool half_close = true;             // WritesDone after the last message
    int cancel_after_results = -1;      // TryCancel once this many results were read (-1: never)
    std::chrono::milliseconds deadline{120000};
  };

  RawCall(const std::shared_ptr<grpc::Channel>& channel, Script script)
      : stub_(channel), script_(std::move(script)) {
    ctx_.set_deadline(std::chrono::system_clock::now() + script_.deadline);
    stub_.PrepareBidiStreamingCall(&ctx_, "/framepipe.v1.FramePipeline/Process",
                                   grpc::StubOptions(), this);
    // Every operation started from outside a reaction is started before StartCall: once the
    // call runs, it may fail and finish (OnDone) on gRPC's thread before this constructor
    // returns, and an operation started after that would touch a finished call. The later
    // writes start from OnWriteDone.
    StartRead(&in_);
    NextWrite();
    FP_TSAN_RELEASE(this);  // everything above happens before any reaction
    StartCall();
  }

  void Cancel() { ctx_.TryCancel(); }

  // Blocks until the call ended; its status.
  grpc::Status Await() {
    std::unique_lock<std::mutex> l(mu_);
    if (!cv_.wait_for(l, kWaitBound, [&] { return done_; })) {
      return grpc::Status(grpc::StatusCode::UNKNOWN, "test: call did not end in time");
    }
    return status_;
  }
  std::vector<v1::FrameResult> results() {
    std::lock_guard<std::mutex> l(mu_);
    return results_;
  }

  void OnReadDone(bool ok) override {
    Scope scope(this);
    if (!ok) return;
    v1::FrameResult r;
    std::vector<grpc::Slice> slices;
    (void)in_.Dump(&slices);
    std::string bytes;
    for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
    r.ParseFromString(bytes);
    bool cancel;
    {
      std::lock_guard<std::mutex> l(mu_);
      results_.push_back(std::move(r));
      cancel = script_.cancel_after_results >= 0 &&
               static_cast<int>(results_.size()) == script_.cancel_after_results;
    }
    if (cancel) ctx_.TryCancel();
    StartRead(&in_);
  }
  void OnWriteDone(bool ok) override {
    Scope scope(this);
    if (!ok) return;
    NextWrite();
  }
  void OnWritesDoneDone(bool /*ok*/) override {}
  void OnDone(const grpc::Status& s) override {
    FP_TSAN_ACQUIRE(this);  // no release after: the owner may free this object once done_
    // Notify under the lock: the owner may destroy this object as soon as it sees done_.
    std::lock_guard<std::mutex> l(mu_);
    status_ = s;
    done_ = true;
    cv_.notify_all();
  }

 private:
  // gRPC runs the reactions on its own (uninstrumented) threads, one at a time, in an order it
  // keeps inside libgrpc; acquiring the object on entry and releasing it on exit states that
  // order to ThreadSanitizer (no-op elsewhere).
  struct Scope {
    explicit Scope(RawCall* c) : c_(c) { FP_TSAN_ACQUIRE(c_); }
    ~Scope() { FP_TSAN_RELEASE(c_); }
    RawCall* c_;
  };

  void NextWrite() {
    if (next_ < script_.messages.size()) {
      out_ = ToByteBuffer(script_.messages[next_++]);
      FP_TSAN_RELEASE(this);
      StartWrite(&out_);
    } else if (script_.half_close && !closed_) {
      closed_ = true;
      StartWritesDone();
    }
  }

  grpc::GenericStub stub_;
  grpc::ClientContext ctx_;
  Script script_;
  size_t next_ = 0;  // only the write chain touches it
  bool closed_ = false;
  grpc::ByteBuffer out_;
  grpc::ByteBuffer in_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  grpc::Status status_;
  std::vector<v1::FrameResult> results_;
};

}  // namespace framepipe::testing
