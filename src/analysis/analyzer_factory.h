// Chooses the analysis backend at run time: "cpu", "cuda" (fails clearly without a usable
// device, or in a build without CUDA) or "auto" (CUDA when a device is usable, else CPU).
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "analysis/analyzer.h"
#include "analysis/cpu/cpu_analyzer.h"

namespace framepipe {

struct BackendChoice {
  std::shared_ptr<Analyzer> analyzer;
  std::string name;    // "cpu" | "cuda"
  std::string detail;  // device name, or why auto fell back to the CPU
};

struct BackendOptions {
  std::string backend = "auto";  // auto | cpu | cuda
  int device = 0;                // CUDA device index
  int workers = 1;               // pipeline workers (the CUDA backend sizes its pools by it)
  CpuAnalyzerOptions cpu;
};

absl::StatusOr<BackendChoice> CreateAnalyzer(const BackendOptions& options);

// Whether this binary was built with the CUDA backend.
bool CudaBackendBuilt();

}  // namespace framepipe
