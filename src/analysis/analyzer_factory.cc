#include "analysis/analyzer_factory.h"

#include <string>

#include "absl/strings/str_cat.h"

#ifdef FRAMEPIPE_HAVE_CUDA
#include "analysis/cuda/cuda_analyzer.h"
#endif

namespace framepipe {

bool CudaBackendBuilt() {
#ifdef FRAMEPIPE_HAVE_CUDA
  return true;
#else
  return false;
#endif
}

absl::StatusOr<BackendChoice> CreateAnalyzer(const BackendOptions& options) {
  const std::string& b = options.backend;
  if (b != "auto" && b != "cpu" && b != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown backend '", b, "' (expected auto, cpu or cuda)"));
  }
  BackendChoice choice;
  if (b == "cpu") {
    choice.analyzer = std::make_shared<CpuAnalyzer>(options.cpu);
    choice.name = "cpu";
    return choice;
  }
#ifdef FRAMEPIPE_HAVE_CUDA
  CudaAnalyzerOptions co;
  co.device = options.device;
  co.streams = std::max(1, options.workers);
  auto cuda = CudaAnalyzer::Create(co);
  if (cuda.ok()) {
    choice.detail = (*cuda)->device_description();
    choice.analyzer = std::move(cuda).value();
    choice.name = "cuda";
    return choice;
  }
  if (b == "cuda") {
    return absl::FailedPreconditionError(absl::StrCat("--backend cuda: ", cuda.status().message()));
  }
  choice.detail = std::string(cuda.status().message());
#else
  if (b == "cuda") {
    return absl::FailedPreconditionError(
        "--backend cuda: this framepipe was built without the CUDA backend "
        "(configure with FRAMEPIPE_ENABLE_CUDA=ON or AUTO on a machine with nvcc)");
  }
  choice.detail = "built without the CUDA backend";
#endif
  choice.analyzer = std::make_shared<CpuAnalyzer>(options.cpu);
  choice.name = "cpu";
  return choice;
}

}  // namespace framepipe
