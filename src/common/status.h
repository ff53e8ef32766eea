// Status helpers shared by every layer. Errors cross module lines as absl::Status /
// absl::StatusOr, never as exceptions (see STYLE.md).
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define FP_STATUS_CONCAT_INNER_(a, b) a##b
#define FP_STATUS_CONCAT_(a, b) FP_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define FP_RETURN_IF_ERROR(expr)             \
  do {                                       \
    ::absl::Status fp_status_ = (expr);      \
    if (!fp_status_.ok()) return fp_status_; \
  } while (false)

// `FP_ASSIGN_OR_RETURN(auto x, MakeX());` binds the value or returns the error.
#define FP_ASSIGN_OR_RETURN(lhs, expr) \
  FP_ASSIGN_OR_RETURN_IMPL_(FP_STATUS_CONCAT_(fp_statusor_, __LINE__), lhs, expr)
#define FP_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).status();  \
  lhs = std::move(tmp).value()
