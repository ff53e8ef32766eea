// ThreadSanitizer annotations for hand-offs through libraries that are not instrumented
// (oneTBB's flow-graph queues): TSan cannot see their internal synchronisation, so the producer
// announces a release on the object it hands over and the consumer an acquire. No-ops in every
// other build.
#pragma once

#if defined(__SANITIZE_THREAD__)
#define FP_TSAN_ENABLED 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FP_TSAN_ENABLED 1
#endif
#endif

#ifdef FP_TSAN_ENABLED
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#define FP_TSAN_ACQUIRE(addr) __tsan_acquire(static_cast<void*>(addr))
#define FP_TSAN_RELEASE(addr) __tsan_release(static_cast<void*>(addr))
#else
#define FP_TSAN_ACQUIRE(addr) ((void)0)
#define FP_TSAN_RELEASE(addr) ((void)0)
#endif

#ifdef __cplusplus
namespace framepipe {

// Acquires `object` for TSan on entry and releases it on exit: for an object whose callbacks a
// non-instrumented library orders (gRPC's reactions), every callback states that order.
#ifdef FP_TSAN_ENABLED
class TsanScope {
 public:
  explicit TsanScope(const void* object) : object_(const_cast<void*>(object)) {
    FP_TSAN_ACQUIRE(object_);
  }
  ~TsanScope() { FP_TSAN_RELEASE(object_); }
  TsanScope(const TsanScope&) = delete;
  TsanScope& operator=(const TsanScope&) = delete;

 private:
  void* object_;
};
#else
class TsanScope {  // nothing to announce without TSan (and no field for clang to call unused)
 public:
  explicit TsanScope(const void*) {}
  TsanScope(const TsanScope&) = delete;
  TsanScope& operator=(const TsanScope&) = delete;
};
#endif

}  // namespace framepipe
#endif
