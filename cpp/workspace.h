// workspace.h: grow-only scratch memory, so that a training step that calls the same
// kernels with the same shapes every iteration allocates nothing after the first one.
//
// Each thread owns a few numbered slots.  A slot only ever grows (to the largest request
// seen so far) and is freed when its thread exits.  Kernels take their scratch from the
// calling thread before they open a parallel region and hand each OpenMP thread its own
// slice, so nothing is allocated (and nothing can throw) inside a parallel region.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <new>
#include <stdexcept>
#include <string>

namespace gasca {
namespace detail {

class Workspace {
 public:
  Workspace() = default;
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  ~Workspace() { std::free(ptr_); }

  // At least `bytes` bytes, 64-byte aligned (one cache line, one AVX-512 register).
  void* get(std::size_t bytes) {
    if (bytes > cap_) {
      std::free(ptr_);
      ptr_ = nullptr;
      cap_ = 0;
      std::size_t c = (bytes + 4095) / 4096 * 4096;
      ptr_ = std::aligned_alloc(64, c);
      if (!ptr_) throw std::bad_alloc();
      cap_ = c;
    }
    return ptr_;
  }
  std::size_t capacity() const { return cap_; }

 private:
  void* ptr_ = nullptr;
  std::size_t cap_ = 0;
};

// Slots: 0 = gemm packing, 1 = convolution columns (im2col), 2 = convolution partial sums,
// 3 = spare.
enum WorkspaceSlot { kSlotGemm = 0, kSlotColumns = 1, kSlotPartial = 2, kSlotSpare = 3, kNumSlots = 4 };

inline Workspace& thread_workspace(int slot) {
  thread_local Workspace ws[kNumSlots];
  return ws[slot];
}

template <typename T>
T* scratch(int slot, int64_t count) {
  // A negative or absurd count (an overflowed size computation) must not wrap to a small
  // allocation: refuse it (std::length_error reaches Python as ValueError).
  if (count < 0 || static_cast<uint64_t>(count) > uint64_t(PTRDIFF_MAX) / sizeof(T))
    throw std::length_error("gasca: scratch request of " + std::to_string(count) +
                            " elements is out of range");
  return static_cast<T*>(thread_workspace(slot).get(static_cast<std::size_t>(count) * sizeof(T)));
}

// Round a count of elements up so that consecutive slices stay 64-byte aligned.
inline int64_t round_up_64b(int64_t count, int64_t elem_size) {
  const int64_t per = 64 / elem_size;
  return (count + per - 1) / per * per;
}

}  // namespace detail
}  // namespace gasca
