// gemm.cpp: C = alpha * op(A) * op(B) + beta * C, row-major.
//
// Versions (pick one with `version`; -1 = the last, fastest):
//   0  reference: the textbook triple loop, one dot product per element of C.
//
// Every faster version is checked against version 0 by tests/test_kernels_gemm.py.
#include "gemm.h"

#include <algorithm>
#include <atomic>
#include <stdexcept>

#ifdef GASCA_OPENMP
#include <omp.h>
#endif

namespace gasca {

// ------------------------------------------------------------------ threads
namespace {
std::atomic<int> g_num_threads{0};  // 0 = not set: use OpenMP's default
}

int get_num_threads() {
#ifdef GASCA_OPENMP
  const int n = g_num_threads.load();
  return n > 0 ? n : omp_get_max_threads();
#else
  return 1;
#endif
}

void set_num_threads(int n) { g_num_threads.store(std::max(1, n)); }

// ------------------------------------------------------------------ version 0: reference
template <typename T>
static void gemm_reference(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha,
                           const T* a, int64_t lda, const T* b, int64_t ldb, T beta, T* c,
                           int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      T sum = 0;
      for (int64_t p = 0; p < k; ++p) {
        const T aip = ta ? a[p * lda + i] : a[i * lda + p];
        const T bpj = tb ? b[j * ldb + p] : b[p * ldb + j];
        sum += aip * bpj;
      }
      // beta == 0 must not read C: it may hold NaN or garbage.
      c[i * ldc + j] = beta == T(0) ? alpha * sum : alpha * sum + beta * c[i * ldc + j];
    }
  }
}

// ------------------------------------------------------------------ dispatch
static const char* const kGemmVersionNames[] = {
    "reference triple loop",
};
static constexpr int kGemmVersions = sizeof(kGemmVersionNames) / sizeof(kGemmVersionNames[0]);

int gemm_num_versions() { return kGemmVersions; }
const char* gemm_version_name(int version) {
  return (version >= 0 && version < kGemmVersions) ? kGemmVersionNames[version] : "";
}

template <typename T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a,
          int64_t lda, const T* b, int64_t ldb, T beta, T* c, int64_t ldc, int version) {
  if (version < 0) version = kGemmVersions - 1;
  if (m <= 0 || n <= 0) return;
  switch (version) {
    case 0:
      gemm_reference<T>(trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
      return;
    default:
      throw std::invalid_argument("gemm: no such version");
  }
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t,
                          const float*, int64_t, float, float*, int64_t, int);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                           int64_t, const double*, int64_t, double, double*, int64_t, int);

}  // namespace gasca
