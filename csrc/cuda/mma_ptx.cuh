// PTX wrappers of the mma.sync GEMM (sm_80+): cp.async, ldmatrix and
// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32, and the fragment layouts they imply.
//
// Layouts: a is [M, K] (row stride lda), b is [N, K] (row stride ldb), both K-major; this is
// exactly mma's .row.col: A row-major, B "column-major" K x N = b's rows with K contiguous.
// Shared memory keeps the same K-major layout, so one ldmatrix (b16 view of 8 rows x 16 bytes)
// produces the int8 fragments directly, for A and for B alike.
//
// Fragment layouts (PTX ISA, mma.m16n8k32 .s8; g = lane >> 2, t = lane & 3; each .b32 holds
// four consecutive-k int8, lowest k in the low byte):
//   A (4 regs):  a0: row g,   k 4t..4t+3     a1: row g+8, k 4t..4t+3
//                a2: row g,   k 16+4t..+3    a3: row g+8, k 16+4t..+3
//   B (2 regs):  b0: col g,   k 4t..4t+3     b1: col g,   k 16+4t..+3
//   C (4 s32):   c0, c1: row g, cols 2t, 2t+1        c2, c3: row g+8, cols 2t, 2t+1
// ldmatrix.x4 gives register r[m] = matrix m (8 rows x 16 bytes, rows addressed by lanes
// 8m..8m+7), thread `lane` receiving row lane>>2, bytes 4*(lane&3)..+3 of it. So for A the
// four matrices are (rows 0-7, k 0-15), (rows 8-15, k 0-15), (rows 0-7, k 16-31),
// (rows 8-15, k 16-31) = a0..a3; for B, (n 0-7, k 0-15), (n 0-7, k 16-31), (n 8-15, k 0-15),
// (n 8-15, k 16-31) = b0, b1 of n-block 0 then b0, b1 of n-block 1.
#pragma once

#include "common.cuh"

#if defined(__CUDA_ARCH__) && (__CUDA_ARCH__ < 800)
#define INT8KERN_NO_MMA 1  // cp.async / int8 mma.m16n8k32 need sm_80: kernels trap
#endif

namespace int8kern {
namespace cuda {

// ----------------------------------------------------------------------------------------
// PTX wrappers.
// ----------------------------------------------------------------------------------------
// 16-byte global -> shared copy, L1 bypass. Caller guarantees 16B alignment of both and that
// all 16 source bytes are in bounds.
INT8KERN_D void cp_async_16(uint32_t dst, const void* src INT8KERN_CALL_SITE) {
#if defined(INT8KERN_EMU)
  ::int8kern::emu::cp_async_16(dst, src, file, line);
#elif !defined(INT8KERN_NO_MMA)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst),
               "l"(__cvta_generic_to_global(src))
               : "memory");
#else
  __trap();
#endif
}
INT8KERN_D void cp_async_commit(INT8KERN_CALL_SITE_ONLY) {
#if defined(INT8KERN_EMU)
  ::int8kern::emu::cp_async_commit(file, line);
#elif !defined(INT8KERN_NO_MMA)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Wait until at most N of this thread's committed groups are still in flight.
template <int N>
INT8KERN_D void cp_async_wait(INT8KERN_CALL_SITE_ONLY) {
#if defined(INT8KERN_EMU)
  ::int8kern::emu::cp_async_wait(N, file, line);
#elif !defined(INT8KERN_NO_MMA)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}

INT8KERN_D void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr INT8KERN_CALL_SITE) {
#if defined(INT8KERN_EMU)
  ::int8kern::emu::ldmatrix_x4(r, addr, file, line);
#elif !defined(INT8KERN_NO_MMA)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
#else
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();
#endif
}

// c += a (16x32, row) * b (32x8, col), exact int32.
INT8KERN_D void mma_s8_16832(int32_t (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2] INT8KERN_CALL_SITE) {
#if defined(INT8KERN_EMU)
  ::int8kern::emu::mma_s8_16832(c, a, b, file, line);
#elif !defined(INT8KERN_NO_MMA)
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 "
      "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
      : "+r"(c[0]), "+r"(c[1]), "+r"(c[2]), "+r"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  __trap();
#endif
}


}  // namespace cuda
}  // namespace int8kern
