// Runs a program (the framepipe binary, a peer server) as a child process for tests and the
// benchmark: captures its stderr, finds the port it reports, sends signals, reaps its exit
// status, and reads its resident memory.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <fstream>
#include <mutex>
#include <regex>
#include <string>
#include <thread>
#include <vector>

namespace framepipe {

class ChildProcess {
 public:
  // `env` entries ("NAME=value") are added to the child's environment.
  explicit ChildProcess(std::vector<std::string> argv, std::vector<std::string> env = {}) {
    int fds[2];
    if (pipe(fds) != 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      dup2(fds[1], STDERR_FILENO);
      close(fds[0]);
      close(fds[1]);
      for (auto& e : env) putenv(e.data());
      std::vector<char*> args;
      for (auto& a : argv) args.push_back(a.data());
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    close(fds[1]);
    fd_ = fds[0];
    reader_ = std::thread([this] {
      char buf[4096];
      ssize_t n;
      while ((n = read(fd_, buf, sizeof(buf))) > 0) {
        std::lock_guard<std::mutex> l(mu_);
        out_.append(buf, static_cast<size_t>(n));
        cv_.notify_all();
      }
      std::lock_guard<std::mutex> l(mu_);
      eof_ = true;
      cv_.notify_all();
    });
  }
  ~ChildProcess() {
    if (pid_ > 0 && !reaped_) {
      kill(pid_, SIGKILL);
      Wait();
    }
    if (reader_.joinable()) reader_.join();
    if (fd_ >= 0) close(fd_);
  }

  // Waits for a line matching `pattern` (one capture group: the port) and returns the port
  // (0 on failure). The default matches framepipe's server_started log line.
  int WaitForPort(std::chrono::seconds bound = std::chrono::seconds(30),
                  const std::string& pattern = "server_started.* port=([0-9]+)") {
    std::unique_lock<std::mutex> l(mu_);
    std::smatch m;
    const std::regex re(pattern);
    cv_.wait_for(l, bound, [&] { return eof_ || std::regex_search(out_, m, re); });
    return std::regex_search(out_, m, re) ? std::stoi(m[1]) : 0;
  }
  // Resident set size in bytes (VmRSS), 0 if unreadable.
  uint64_t RssBytes() const {
    std::ifstream in("/proc/" + std::to_string(pid_) + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("VmRSS:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    }
    return 0;
  }
  bool WaitForOutput(const std::string& needle, std::chrono::seconds bound) {
    std::unique_lock<std::mutex> l(mu_);
    return cv_.wait_for(l, bound, [&] { return eof_ || out_.find(needle) != std::string::npos; }) &&
           out_.find(needle) != std::string::npos;
  }
  void Signal(int sig) { kill(pid_, sig); }
  // Exit status as from waitpid.
  int Wait() {
    int status = 0;
    waitpid(pid_, &status, 0);
    reaped_ = true;
    return status;
  }
  std::string output() {
    std::lock_guard<std::mutex> l(mu_);
    return out_;
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int fd_ = -1;
  bool reaped_ = false;
  std::thread reader_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::string out_;
  bool eof_ = false;
};

// Samples a child's resident memory every `period` on a thread of its own, from construction
// until Stop(): the baseline and the peak, for the memory-bound tests and the benchmark.
class PeakRss {
 public:
  PeakRss(const ChildProcess& child, std::chrono::milliseconds period)
      : child_(child), base_(child.RssBytes()), peak_(base_), sampler_([this, period] {
          while (!done_) {
            peak_ = std::max<uint64_t>(peak_, child_.RssBytes());
            std::this_thread::sleep_for(period);
          }
        }) {}
  ~PeakRss() { Stop(); }
  void Stop() {
    done_ = true;
    if (sampler_.joinable()) sampler_.join();
  }
  uint64_t base() const { return base_; }
  uint64_t peak() const { return peak_; }
  double GrowthMiB() const {
    return (static_cast<double>(peak_) - static_cast<double>(base_)) / 1048576.0;
  }

 private:
  const ChildProcess& child_;
  const uint64_t base_;
  std::atomic<uint64_t> peak_;
  std::atomic<bool> done_{false};
  std::thread sampler_;
};

}  // namespace framepipe
