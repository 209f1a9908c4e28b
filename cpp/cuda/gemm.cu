// gemm.cu: C = alpha op(A) op(B) + beta C on the GPU (row-major, as cpp/gemm.h).
//
// Versions (pick one with `version`; -1 = the last, fastest):
//   0  naive: one thread per element of C, a dot product read straight from global memory.
//   1  tiled: the shared-memory tile engine of tiled_gemm.cuh (the same one the
//      convolutions use), with plain strided matrices as its operands.
#include "common.cuh"
#include "tiled_gemm.cuh"

namespace gasca {
namespace cuda {

static const char* const kGemmVersionNames[] = {
    "naive: one thread per element of C",
    "tiled: 64x64 shared-memory tiles, register blocking",
};
static constexpr int kGemmVersions = sizeof(kGemmVersionNames) / sizeof(kGemmVersionNames[0]);

int gemm_num_versions() { return kGemmVersions; }
const char* gemm_version_name(int version) {
  return (version >= 0 && version < kGemmVersions) ? kGemmVersionNames[version] : "";
}

// ============================================================ version 0: naive
template <typename T>
__global__ void gemm_naive(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha,
                           const T* __restrict__ a, int64_t lda, const T* __restrict__ b,
                           int64_t ldb, T beta, T* __restrict__ c, int64_t ldc) {
  for (int64_t idx = global_thread_index(); idx < m * n; idx += global_thread_count()) {
    const int64_t row = idx / n, col = idx - row * n;
    T sum = T(0);
    for (int64_t p = 0; p < k; ++p)
      sum += (trans_a ? a[p * lda + row] : a[row * lda + p]) *
             (trans_b ? b[col * ldb + p] : b[p * ldb + col]);
    T& out = c[row * ldc + col];
    out = beta == T(0) ? alpha * sum : alpha * sum + beta * out;  // beta == 0: C is not read
  }
}

// ============================================================ version 1: tiled
template <typename T>
struct MatrixRows {  // A(m, k) = op(A)[m, k]
  const T* a;
  int64_t lda;
  bool trans;
  struct Line { const T* start; int64_t step; };  // element (m, 0) and the stride along k
  struct Cursor { int64_t k; };
  GASCA_HD Line line(int64_t row) const {
    return trans ? Line{a + row, lda} : Line{a + row * lda, 1};
  }
  GASCA_HD Cursor cursor(int64_t k) const { return {k}; }
  GASCA_HD void advance(Cursor& c) const { ++c.k; }
  GASCA_HD T load(const Line& l, const Cursor& c) const { return l.start[c.k * l.step]; }
};

template <typename T>
struct MatrixCols {  // B(k, n) = op(B)[k, n]
  const T* b;
  int64_t ldb;
  bool trans;
  struct Line { const T* start; int64_t step; };  // element (0, n) and the stride along k
  struct Cursor { int64_t k; };
  GASCA_HD Line line(int64_t col) const {
    return trans ? Line{b + col * ldb, 1} : Line{b + col, ldb};
  }
  GASCA_HD Cursor cursor(int64_t k) const { return {k}; }
  GASCA_HD void advance(Cursor& c) const { ++c.k; }
  GASCA_HD T load(const Line& l, const Cursor& c) const { return l.start[c.k * l.step]; }
};

template <typename T>
struct MatrixOut {  // C[m, n] = alpha acc + beta C[m, n]
  T* c;
  int64_t ldc;
  T alpha, beta;
  GASCA_HD int64_t col_offset(int64_t col) const { return col; }
  GASCA_HD void write(int64_t row, int64_t off, T acc) const {
    T& out = c[row * ldc + off];
    out = beta == T(0) ? alpha * acc : alpha * acc + beta * out;
  }
};

template <typename T>
Status gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
            int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc, int version,
            cudaStream_t stream) {
  if (version < 0) version = kGemmVersions - 1;
  if (m == 0 || n == 0) return Status{};
  if (version == 0) {
    gemm_naive<T><<<elementwise_blocks(m * n), kElementwiseThreads, 0, stream>>>(
        trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
    return launch_status("gemm_naive");
  }
  return launch_tiled_gemm<T>("gemm_tiled", MatrixRows<T>{a, lda, trans_a},
                              MatrixCols<T>{b, ldb, trans_b}, MatrixOut<T>{c, ldc, alpha, beta},
                              m, n, k, true, stream);
}

template Status gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                            const float*, int64_t, float, float*, int64_t, int, cudaStream_t);
template Status gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                             int64_t, const double*, int64_t, double, double*, int64_t, int,
                             cudaStream_t);

}  // namespace cuda
}  // namespace gasca
