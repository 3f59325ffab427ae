// What lets one .cu source compile both with nvcc (or NVRTC) and with g++ under cuda_emulate.h.
// common.cuh includes this; the emulator's definitions of the same names are in cuda_emulate.h.
#pragma once

#ifndef FASTCNN_EMULATE
// FASTCNN_DYNAMIC_SHARED(T, name); declares `T* name`, the block's dynamic shared memory (the
// bytes given as shared_mem at launch), 16-byte aligned. Kernels use it instead of
// `extern __shared__ T name[];`, which g++ cannot be taught, and which nvcc rejects anyway when
// two instantiations of a template declare it with different T. Every use in a kernel points at
// the same bytes: carve several arrays out of one with pointer arithmetic.
#define FASTCNN_DYNAMIC_SHARED(T, name)                                        \
  extern __shared__ __align__(16) unsigned char fastcnn_dynamic_shared_bytes[]; \
  T* name = reinterpret_cast<T*>(fastcnn_dynamic_shared_bytes)
#endif
