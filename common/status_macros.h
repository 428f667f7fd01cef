// Control-path error plumbing on top of absl::Status / absl::StatusOr.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define PDS_STATUS_CONCAT_INNER(a, b) a##b
#define PDS_STATUS_CONCAT(a, b) PDS_STATUS_CONCAT_INNER(a, b)

// Returns the status from the enclosing function when it is not OK.
#define PDS_RETURN_IF_ERROR(expr)              \
  do {                                         \
    ::absl::Status _pds_status = (expr);       \
    if (!_pds_status.ok()) return _pds_status; \
  } while (false)

// `PDS_ASSIGN_OR_RETURN(auto x, MakeX());` unwraps a StatusOr or returns.
#define PDS_ASSIGN_OR_RETURN(lhs, expr) \
  PDS_ASSIGN_OR_RETURN_IMPL(PDS_STATUS_CONCAT(_pds_statusor_, __LINE__), lhs, expr)
#define PDS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
