// The GPU kernels of kernels/cuda/quantize.cu, built for the CPU emulation.
#include "kernels/cuda/quantize.cu"
