// Elementary functions the kernels share, written so the compiler vectorises them.
// float32 exp is a polynomial (libm's is a scalar call); float64 calls libm.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace fastcnn {

// exp(x) for x <= 0 or NaN. Cephes-style: x = n ln2 + r with |r| <= ln2 / 2, exp(r) by a
// degree-6 polynomial, 2^n built in the exponent bits; as the Numba backend's. Written so
// that GCC vectorises it: no std::floor, no operation inside a `?:`.
inline float exp_nonpositive(float x) {
    constexpr float lowest = -87.3f;  // exp(-87.3) ~ 1.2e-38, still a normal float
    const float clamped = x >= lowest ? x : lowest;  // NaN too: its n below stays an int
    // n = the integer nearest x / ln2, in [-126, 0], by adding and taking away 1.5 * 2^23
    // (the Numba backend's floor(x / ln2 + 0.5) but at ties; GCC vectorises std::floor
    // only without -ftrapping-math).
    constexpr float round_to_integer = 12582912.0f;
    const float n = (clamped * 1.4426950408889634f + round_to_integer) - round_to_integer;
    const float r = clamped - n * 0.693359375f - n * -2.12194440e-4f;  // ln2 in two parts
    float p = 1.9875691500e-4f * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    const std::int32_t bits = (static_cast<std::int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof scale);
    // Every value computed, then selected: a multiply inside `?:` would be a conditional
    // operation that may raise a flag, which GCC will not if-convert (the loop stays scalar).
    const float product = p * scale;
    const float result = x >= lowest ? product : 0.0f;  // below: under 1.2e-38; -inf: 0
    return x == x ? result : x;
}

inline double exp_nonpositive(double x) { return std::exp(x); }

}  // namespace fastcnn
