// Element-wise and row-wise ops of a Llama block. One row per call unless
// a count says otherwise; the caller splits rows across threads.
#pragma once

#include <cstdint>

namespace pdserve::kernels {

// y = x / sqrt(mean(x²) + eps) * w; y may alias x.
void RmsNorm(float* y, const float* x, const float* w, int64_t n, float eps);

// Rotates adjacent pairs (x[2i], x[2i+1]) of each of n_heads heads by the
// angle whose cosine and sine are cos_sin[2i], cos_sin[2i+1] (GGUF `llama`
// layout: conversion already permuted Q and K). Only the first n_rot
// dimensions of each head rotate.
void Rope(float* x, int n_heads, int head_dim, int n_rot, const float* cos_sin);

// y = silu(gate) * up; y may alias gate.
void SwiGlu(float* y, const float* gate, const float* up, int64_t n);

// In-place numerically stable softmax.
void Softmax(float* x, int64_t n);

// y += x.
void AddInplace(float* y, const float* x, int64_t n);

// References for tests (straightforward loops in double).
void RmsNormRef(float* y, const float* x, const float* w, int64_t n, float eps);
void RopeRef(float* x, int n_heads, int head_dim, int n_rot, const float* cos_sin);
void SwiGluRef(float* y, const float* gate, const float* up, int64_t n);
void SoftmaxRef(float* x, int64_t n);

}  // namespace pdserve::kernels
