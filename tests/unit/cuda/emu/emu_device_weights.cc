// engine/cuda/device_weights.cc built for the CPU emulation.
#include "kernels/cuda/cuda_compat.h"  // first: renames the cuda namespaces
//
#include "engine/cuda/device_weights.cc"
