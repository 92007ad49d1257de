// vpdpbusd on zmm registers through inline asm: GCC 12's builtin pins its accumulator to
// zmm0-15 (the VEX form's registers) and copies every accumulator around each instruction.
// acc[i] += sum_{t<4} u[4i + t] (unsigned) * s[4i + t] (signed), int32 lanes, no saturation.
#pragma once

#include <immintrin.h>

namespace vllm_ascend {

__attribute__((target("avx512f"), always_inline)) inline void dpbusd512(__m512i& acc, __m512i u,
                                                                        __m512i s) {
  asm("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "v"(s));
}

}  // namespace vllm_ascend
