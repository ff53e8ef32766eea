// The real `framepipe serve` binary as a child process: SIGTERM mid-stream answers every
// admitted frame, ends the stream with UNAVAILABLE naming what was answered, and exits 0.
#include <gtest/gtest.h>

#include <regex>

#include "child_process.h"
#include "test_server.h"

namespace framepipe {
namespace {

using namespace framepipe::testing;  // NOLINT
using framepipe::ChildProcess;

std::shared_ptr<grpc::Channel> ChannelTo(int port) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials(), args);
}

TEST(SigtermTest, DrainsAdmittedFramesAndExitsZero) {
  for (const char* sig_name : {"SIGTERM", "SIGINT"}) {
    SCOPED_TRACE(sig_name);
    ChildProcess child({FRAMEPIPE_BINARY, "serve", "--listen", "127.0.0.1:0", "--workers", "2",
                        "--backend", "cpu", "--drain-timeout", "20s", "--metrics", ""});
    const int port = child.WaitForPort();
    ASSERT_GT(port, 0) << child.output();
    Call call(ChannelTo(port));
    ASSERT_TRUE(call.Write(ConfigMsg(8)));
    std::atomic<bool> stop{false};
    std::thread writer([&] {
      for (uint64_t i = 1; i <= 100000 && !stop; ++i) {
        if (!call.Write(JpegFrame(i))) break;
      }
    });
    std::vector<pb::FrameResult> got;
    pb::FrameResult r;
    bool signalled = false;
    while (call.Read(&r)) {
      got.push_back(r);
      if (got.size() == 30 && !signalled) {
        child.Signal(std::string(sig_name) == "SIGTERM" ? SIGTERM : SIGINT);
        signalled = true;
      }
    }
    stop = true;
    grpc::Status st = call.Finish();
    writer.join();
    const int status = child.Wait();
    ASSERT_TRUE(signalled);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << child.output();
    // Results are exactly frames 1..k in order: nothing admitted was lost.
    for (size_t i = 0; i < got.size(); ++i) {
      ASSERT_EQ(got[i].seq(), i + 1);
      EXPECT_EQ(got[i].status(), pb::FRAME_STATUS_OK);
    }
    EXPECT_EQ(st.error_code(), grpc::StatusCode::UNAVAILABLE) << st.error_message();
    std::smatch m;
    const std::string msg = st.error_message();
    ASSERT_TRUE(std::regex_search(msg, m, std::regex("answered \\(([0-9]+) frames\\)"))) << msg;
    EXPECT_EQ(std::stoul(m[1]), got.size()) << "the server answered every frame it admitted";
    const std::string out = child.output();
    EXPECT_NE(out.find(std::string("event=signal signal=") + sig_name), std::string::npos) << out;
    EXPECT_NE(out.find("event=server_stopped drained=true"), std::string::npos) << out;
    EXPECT_NE(out.find("event=stream_closed"), std::string::npos) << out;
  }
}

}  // namespace
}  // namespace framepipe
