// Prometheus metrics of a real server: values after a known workload, agreement with the
// per-frame Timings, concurrent scrapes during load, and metrics disabled.
#include <gtest/gtest.h>

#include <atomic>
#include <mutex>

#include "absl/strings/str_cat.h"

#include "http_get.h"
#include "server/metrics.h"
#include "test_server.h"

namespace framepipe {
namespace {

using namespace framepipe::testing;  // NOLINT

TEST(MetricsTest, KnownWorkloadGivesExactCounts) {
  ServerOptions o;
  o.metrics = "127.0.0.1:0";
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  ASSERT_GT(server->metrics_port(), 0);
  Call call(Channel(*server));
  ASSERT_TRUE(call.Write(ConfigMsg(4)));
  constexpr int kGood = 30, kBad = 7;
  uint64_t seq = 1;
  for (int i = 0; i < kGood; ++i) ASSERT_TRUE(call.Write(JpegFrame(seq++, 1000)));
  for (int i = 0; i < kBad; ++i) {
    pb::ProcessRequest r;
    r.mutable_frame()->set_seq(seq++);
    r.mutable_frame()->set_encoded("not an image");
    ASSERT_TRUE(call.Write(r));
  }
  call.WritesDone();
  auto got = call.ReadAll();
  ASSERT_TRUE(call.Finish().ok());
  ASSERT_EQ(got.size(), static_cast<size_t>(kGood + kBad));
  // The stream is closed and every write completed: the gauges are back to idle.
  ASSERT_TRUE(WaitForStats(*server, [](const pb::Stats& s) { return s.active_streams() == 0; }));
  const std::string text = HttpGet(server->metrics_port(), "/metrics");
  ASSERT_FALSE(text.empty());
  EXPECT_EQ(MetricValue(text, "framepipe_frames_total{status=\"ok\"}"), kGood);
  EXPECT_EQ(MetricValue(text, "framepipe_frames_total{status=\"invalid_argument\"}"), kBad);
  EXPECT_EQ(MetricValue(text, "framepipe_frames_total{status=\"dropped\"}"), 0);
  EXPECT_EQ(MetricValue(text, "framepipe_stage_seconds_count{stage=\"total\"}"), kGood + kBad);
  EXPECT_EQ(MetricValue(text, "framepipe_stage_seconds_count{stage=\"decode\"}"), kGood);
  EXPECT_EQ(MetricValue(text, "framepipe_stage_seconds_count{stage=\"write\"}"), kGood + kBad);
  EXPECT_EQ(MetricValue(text, "framepipe_in_flight"), 0);
  EXPECT_EQ(MetricValue(text, "framepipe_reorder_depth"), 0);
  EXPECT_EQ(MetricValue(text, "framepipe_active_streams"), 0);
  EXPECT_EQ(MetricValue(text, "framepipe_streams_total"), 1);
  EXPECT_EQ(MetricValue(text, "framepipe_frames_received_total"), kGood + kBad);
  EXPECT_EQ(MetricValue(text, "framepipe_capture_lag_seconds_count"), kGood);
  EXPECT_GT(MetricValue(text, "framepipe_received_bytes_total"), 0);
  EXPECT_NE(text.find("framepipe_build_info{backend=\"cpu\",version=\"0.1.0\"} 1"),
            std::string::npos);
  EXPECT_NE(text.find("# HELP framepipe_stage_seconds "), std::string::npos);
  // Histogram sums agree with the per-frame Timings the client saw (same clock points).
  double decode_sum_us = 0, total_sum_us = 0;
  for (const auto& r : got) {
    if (r.status() == pb::FRAME_STATUS_OK) decode_sum_us += r.timings().decode_us();
    total_sum_us += r.timings().total_us();
  }
  EXPECT_NEAR(MetricValue(text, "framepipe_stage_seconds_sum{stage=\"decode\"}"),
              decode_sum_us / 1e6, 1e-6 * kGood);
  EXPECT_NEAR(MetricValue(text, "framepipe_stage_seconds_sum{stage=\"total\"}"), total_sum_us / 1e6,
              1e-6 * (kGood + kBad));
}

TEST(MetricsTest, ConcurrentScrapesDuringLoad) {
  ServerOptions o;
  o.metrics = "127.0.0.1:0";
  o.wrap_stages = WrapAnalyse(1000);
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  std::atomic<bool> done{false};
  std::atomic<int> scrapes{0}, bad{0};
  std::mutex first_bad_mu;
  std::string first_bad;  // what the first bad scrape got, for the failure message
  std::vector<std::thread> scrapers;
  for (int t = 0; t < 4; ++t) {
    scrapers.emplace_back([&] {
      while (!done) {
        const std::string text = HttpGet(server->metrics_port(), "/metrics");
        const double in_flight = MetricValue(text, "framepipe_in_flight");
        const bool has_frames = text.find("framepipe_frames_total") != std::string::npos;
        if (!has_frames || in_flight < 0 || in_flight > 3 * 8) {
          ++bad;
          std::lock_guard<std::mutex> l(first_bad_mu);
          if (first_bad.empty()) {
            first_bad = absl::StrCat(text.size(), " bytes, in_flight ", in_flight,
                                     ", begins: ", text.substr(0, 300));
          }
        }
        ++scrapes;
      }
    });
  }
  std::vector<std::thread> clients;
  for (int k = 0; k < 3; ++k) {
    clients.emplace_back([&] {
      Call call(Channel(*server));
      for (int i = 1; i <= 40; ++i) call.Write(JpegFrame(i));
      call.WritesDone();
      EXPECT_EQ(call.ReadAll().size(), 40u);
      EXPECT_TRUE(call.Finish().ok());
    });
  }
  for (auto& t : clients) t.join();
  done = true;
  for (auto& t : scrapers) t.join();
  EXPECT_GT(scrapes.load(), 4);
  EXPECT_EQ(bad.load(), 0) << "first bad scrape: " << first_bad;
  ASSERT_TRUE(WaitForStats(*server, [](const pb::Stats& s) { return s.active_streams() == 0; }));
  const std::string text = HttpGet(server->metrics_port(), "/metrics");
  EXPECT_EQ(MetricValue(text, "framepipe_frames_total{status=\"ok\"}"), 120);
  EXPECT_EQ(MetricValue(text, "framepipe_in_flight"), 0);
}

// A scraper that cannot take the whole response at once (a small receive window: a Prometheus
// across a real network) still gets all of it. The exporter used to close with SO_LINGER 0,
// which resets the connection and throws away what the client has not yet acknowledged: such a
// scrape stopped after ~4 KB of ~20 KB.
TEST(MetricsTest, ASlowReaderGetsTheWholeScrape) {
  ServerOptions o;
  o.metrics = "127.0.0.1:0";
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  const std::string full = HttpGet(server->metrics_port(), "/metrics");
  ASSERT_GT(full.size(), 16384u) << "the response must not fit a 4 KiB receive buffer";
  for (int i = 0; i < 5; ++i) {
    const std::string slow = HttpGet(server->metrics_port(), "/metrics", 4096);
    // The same families in the same order, to the last line (values may move between scrapes).
    ASSERT_GT(slow.size(), full.size() * 9 / 10)
        << "scrape " << i << " was cut: " << slow.size() << " of ~" << full.size() << " bytes";
    const size_t last = full.rfind("\n# HELP ");
    ASSERT_NE(last, std::string::npos);
    const std::string last_family = full.substr(last + 1, full.find('\n', last + 1) - last - 1);
    EXPECT_NE(slow.find(last_family), std::string::npos) << "scrape " << i;
    EXPECT_EQ(slow.back(), '\n') << "scrape " << i;
  }
}

TEST(MetricsTest, DisabledMetricsServeNothing) {
  ServerOptions o;
  o.metrics = "";
  auto server = StartTestServer(o);
  ASSERT_TRUE(server);
  EXPECT_EQ(server->metrics_port(), 0);
  EXPECT_EQ(server->metrics(), nullptr);
  Call call(Channel(*server));
  call.Write(JpegFrame(1));
  call.WritesDone();
  EXPECT_EQ(call.ReadAll().size(), 1u);
  EXPECT_TRUE(call.Finish().ok());
}

TEST(MetricsTest, HistogramBucketsAreCumulativeAndLockFree) {
  AtomicHistogram h({0.001, 0.01, 0.1});
  std::vector<std::thread> ts;
  for (int t = 0; t < 4; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < 10000; ++i) h.Observe(t == 0 ? 0.0005 : (t == 1 ? 0.005 : 0.5));
    });
  }
  for (auto& t : ts) t.join();
  auto cum = h.Cumulative();
  ASSERT_EQ(cum.size(), 4u);
  EXPECT_EQ(cum[0], 10000u);
  EXPECT_EQ(cum[1], 20000u);
  EXPECT_EQ(cum[2], 20000u);
  EXPECT_EQ(cum[3], 40000u);
  EXPECT_NEAR(h.sum(), 10000 * (0.0005 + 0.005 + 0.5 + 0.5), 1e-6);
}

}  // namespace
}  // namespace framepipe
