// gemm.h: the matrix product every convolution in gasca_core stands on.
//
//   C = alpha * op(A) * op(B) + beta * C        (row-major, op(X) = X or X^T)
//
// op(A) is m x k, op(B) is k x n, C is m x n.  lda/ldb/ldc are row strides in elements.
// When beta == 0, C is overwritten and its old contents are never read (NaN-safe).
//
// `version` picks the implementation (see gemm.cpp's top-of-file map); -1 = the fastest.
#pragma once
#include <cstdint>

namespace gasca {

int gemm_num_versions();
const char* gemm_version_name(int version);
int gemm_fastest_version();  // what version -1 picks

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
          const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc,
          int version = -1);

// Threads used by the parallel kernels (OpenMP when built with it, else 1).
int get_num_threads();
void set_num_threads(int n);

}  // namespace gasca
