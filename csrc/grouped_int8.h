// Exact int8 x int8 accumulators of small row groups on AVX-512 VNNI (csrc/grouped_int8.cpp),
// for the int8 path of vllm_ascend::grouped_matmul (csrc/grouped_matmul.cpp).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

namespace vllm_ascend {

struct RowGroup {
  int64_t e, lo, hi;  // expert, rows [lo, hi)
};

// The CPU has AVX-512 F/BW + VNNI (the kernel's instructions).
bool int8_vnni_supported();

// The kernel takes weights (E, K, N) with K a multiple of 4 and below 2**16 (int32 headroom).
bool int8_vnni_fits(const at::Tensor& weight);

// acc[lo:hi] (int32, (M, N) contiguous) = x[lo:hi] (int8 (M, K) contiguous) @ weight[e]
// (int8 (E, K, N)) for every group, exactly. The weight is repacked once per tensor into
// the VNNI layout and kept in a C++ cache (rebuilt after an in-place write).
void grouped_int8_vnni(const at::Tensor& x, const at::Tensor& weight,
                       const std::vector<RowGroup>& groups, at::Tensor& acc);

// Packs built so far; clear=true drops them (tests).
int64_t grouped_int8_vnni_cache(bool clear);

}  // namespace vllm_ascend
