// A cache of data derived from a tensor (prepacked weights, oneDNN handles, scale tables),
// kept in C++ so that a compiled model's GEMM op needs no Python to find its weight.
//
// Entries are keyed by (storage, data pointer, tag) and are valid while the storage is alive
// (weak pointer) and the tensor's sizes, strides and version counter (in-place writes; an
// inference tensor has none) are unchanged; a stale entry is rebuilt. Entries of dead
// storages are dropped (and `release`d) whenever something is built, so a new tensor that
// reuses a dead one's address never sees the old value. Thread-safe.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/StorageImpl.h>
#include <c10/util/intrusive_ptr.h>

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

namespace vllm_ascend {

template <typename V>
class TensorCache {
 public:
  explicit TensorCache(std::function<void(V&)> release = nullptr) : release_(std::move(release)) {}

  // The value for `t` (built by `build(t)` when missing or stale). The reference stays valid
  // until the next call on this cache from any thread that builds; callers use it at once.
  template <typename Build>
  const V& get(const at::Tensor& t, int64_t tag, Build&& build) {
    const Key key{t.storage().unsafeGetStorageImpl(), t.data_ptr(), tag};
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = map_.find(key);
    if (it != map_.end()) {
      Entry& e = it->second;
      if (!e.storage.expired() && t.sizes().equals(e.sizes) && t.strides().equals(e.strides) &&
          e.version == version_of(t))
        return e.value;
      drop(it);
    }
    prune();
    Entry e{c10::weak_intrusive_ptr<c10::StorageImpl>(t.storage().getWeakStorageImpl()),
            t.sizes().vec(), t.strides().vec(), version_of(t), build(t)};
    built_ += 1;
    return map_.emplace(key, std::move(e)).first->second.value;
  }

  int64_t builds() {
    std::lock_guard<std::mutex> lock(mutex_);
    return built_;
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    while (!map_.empty()) drop(map_.begin());
  }

 private:
  using Key = std::tuple<const c10::StorageImpl*, const void*, int64_t>;
  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    std::vector<int64_t> sizes, strides;
    int64_t version;
    V value;
  };

  static int64_t version_of(const at::Tensor& t) {
    return t.is_inference() ? -1 : static_cast<int64_t>(t._version());
  }

  typename std::map<Key, Entry>::iterator drop(typename std::map<Key, Entry>::iterator it) {
    if (release_) release_(it->second.value);
    return map_.erase(it);
  }

  void prune() {
    for (auto it = map_.begin(); it != map_.end();)
      it = it->second.storage.expired() ? drop(it) : std::next(it);
  }

  std::function<void(V&)> release_;
  std::mutex mutex_;
  std::map<Key, Entry> map_;
  int64_t built_ = 0;
};

}  // namespace vllm_ascend
