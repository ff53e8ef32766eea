// FP_MULTIVERSION: compiles a hot loop twice, for AVX2 and for the baseline x86-64, and picks one
// at load time for the CPU it runs on (GCC function multi-versioning): one binary for every
// x86-64 host. Elsewhere - other compilers, sanitizer builds, whose runtimes do not support the
// resolvers - it is a plain function.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(__SANITIZE_ADDRESS__) && !defined(__SANITIZE_THREAD__)
#define FP_MULTIVERSION __attribute__((target_clones("avx2", "default")))
#else
#define FP_MULTIVERSION
#endif
